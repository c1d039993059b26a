"""fedprompt Flower App (ServerApp with stock FedAvg; Python ClientApp with PEFT)."""
