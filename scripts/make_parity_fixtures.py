#!/usr/bin/env python3
"""Make the numerical-parity fixtures for the Rust crate `fedprompt-model`.

What it makes (all under crates/fedprompt-model/tests/fixtures/, small, deterministic):

  tokenizer/             the tiny Unigram tokenizer (vocab 401, <mask> = 400), XLM-R template
                         (tokenizer.json + configs); NFKC normaliser, Metaspace (prepend always)
  tiny-xlmr/             XLMRobertaForSequenceClassification (hidden 32, 2 layers, 4 heads,
                         FFN 64, 66 positions, 3 labels), random init + noise on every tensor,
                         config.json + model.safetensors + the tokenizer
  tiny-xlmr-sharded/     the same weights, sharded (model.safetensors.index.json + shards)
  tiny-bert/             BertForSequenceClassification (same sizes, 64 positions,
                         type_vocab_size 2, pooler), same vocab, BERT-style template with type ids
  adapters/F-M/          F in {xlmr, bert}; M in {prompt, prompt-encoder, lora}: PEFT's own
                         save_pretrained layout (adapter_config.json + adapter_model.safetensors);
                         M = head: head.safetensors with the classifier tensors under HF names
  refs/F-M.safetensors   inputs, labels, logits, loss, grad/<param name> and param/<param name> for every trainable
                         parameter (eval mode, mean cross-entropy), M in {prompt, prompt-encoder,
                         lora, head, full}; prompt methods also store `prompt_output` [P, H]
                         (the virtual-token embeddings that get prepended)
  refs/F-M.json          texts, grad names + shapes, adapter key mapping, and notes on the
                         semantics a reimplementation must match
  refs/prompt-text-init.{json,safetensors}
                         PEFT TEXT init of the prompt on tiny-xlmr for 1 and 12 virtual tokens
  refs/tokenization.json ids / type ids / offsets of a few strings through both templates
  VERSIONS.json          torch / transformers / peft / tokenizers / safetensors / numpy versions

Every trainable tensor is randomised away from its default init (LoRA B non-zero, classifier
different from the base folder's, random prompt) so that an adapter loaded wrongly fails.
After writing, the script reloads every ref and checks that each saved adapter loaded with
`PeftModel.from_pretrained` (or head.safetensors loaded into the base model) reproduces the
stored logits to 1e-6.

Rerun (offline, CPU, a few seconds; wipes and recreates the generated folders):

    /path/to/python scripts/make_parity_fixtures.py          # e.g. /work/pyref/bin/python

Needs torch, transformers (>= 5), peft, tokenizers, safetensors, numpy.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import json
import shutil
import sys
from pathlib import Path

import numpy
import peft
import safetensors
import tokenizers
import torch
import transformers
from peft import (
    LoraConfig,
    PeftModel,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "crates" / "fedprompt-model" / "tests" / "fixtures"
GENERATED = ["tokenizer", "tiny-xlmr", "tiny-xlmr-sharded", "tiny-bert", "adapters", "refs"]

VOCAB_SIZE = 400  # Unigram pieces incl. the 4 specials; <mask> is appended after them (id 400)
HIDDEN, LAYERS, HEADS, FFN, NUM_LABELS = 32, 2, 4, 64, 3
NUM_VIRTUAL = 4
METHODS = ["prompt", "prompt-encoder", "lora", "head", "full"]
INIT_TEXT = "Predict the category given the following news article"

CORPUS = [
    # English
    "Predict the category given the following news article.",
    "The weather is nice today and the children play outside.",
    "Stock markets fell sharply after the central bank raised rates.",
    "The football team won the final match of the season.",
    "Scientists discovered a new species of frog in the forest.",
    "How are you doing this morning, my friend?",
    "The new phone has a better camera and a longer battery life.",
    "Parliament will vote on the budget next week.",
    # French
    "Le temps est magnifique aujourd'hui à Paris.",
    "Les marchés financiers ont chuté après l'annonce.",
    "L'équipe de football a gagné le match final.",
    "Je voudrais un café et un croissant, s'il vous plaît.",
    "Le gouvernement présente une nouvelle loi sur l'énergie.",
    "Les chercheurs ont découvert une nouvelle étoile.",
    # Spanish
    "El tiempo está muy bueno hoy en Madrid.",
    "Los mercados cayeron después de la decisión del banco.",
    "El equipo ganó el partido final de la temporada.",
    "¿Dónde está la estación de tren, por favor?",
    "La película ganó tres premios en el festival.",
    "Los científicos estudian el cambio climático.",
    # German
    "Das Wetter ist heute sehr schön in Berlin.",
    "Die Börse fiel nach der Entscheidung der Zentralbank.",
    "Die Mannschaft gewann das letzte Spiel der Saison.",
    "Ich möchte bitte einen Kaffee und ein Brötchen.",
    "Die Regierung plant ein neues Gesetz für Schulen.",
    "Forscher haben eine neue Art von Frosch entdeckt.",
    # Russian
    "Сегодня в Москве очень хорошая погода.",
    "Фондовый рынок упал после решения банка.",
    "Команда выиграла финальный матч сезона.",
    "Учёные открыли новый вид лягушки в лесу.",
    "Правительство обсуждает новый закон о налогах.",
    "Как у тебя дела, мой друг?",
    # Swahili
    "Hali ya hewa ni nzuri sana leo jijini Nairobi.",
    "Soko la hisa lilianguka baada ya uamuzi wa benki.",
    "Timu ilishinda mechi ya mwisho ya msimu.",
    "Wanasayansi waligundua aina mpya ya chura msituni.",
    "Habari za asubuhi, rafiki yangu?",
    "Serikali inajadili sheria mpya ya elimu.",
    # Italian / Portuguese / Turkish, for a few more characters
    "La squadra ha vinto la partita finale.",
    "O mercado caiu depois da decisão do banco central.",
    "Bugün hava çok güzel ve çocuklar dışarıda oynuyor.",
    "Numbers like 2024, 3.14 and 100% appear in news too.",
]

# Batch used by every (family, method) ref: one single text, one text pair, one short text
# (different lengths so right padding is exercised; "Ωμέγα" has characters outside the corpus -> <unk>).
BATCH = [
    ("The football team won the final match.", None),
    ("Les marchés ont chuté après la décision.", "Die Börse fiel sehr stark."),
    ("Habari Ωμέγα!", None),
]
LABELS = [0, 2, 1]


# ----------------------------------------------------------------------------- tokenizer


def unigram_vocab():
    """Deterministic Unigram vocabulary: (piece, log-prob) for <s> <pad> </s> <unk>, then every character of the
    NFKC-normalised corpus plus "▁", then the most useful substrings of "▁"-prefixed words.

    tokenizers' UnigramTrainer gives slightly different piece orders and scores in every process (its Rust
    HashMaps are randomly seeded), so the fixtures could not be reproduced byte for byte; the pieces and
    scores are therefore computed here from plain counts (score = ln(count / total), a valid Unigram model).
    """
    import math
    import unicodedata
    from collections import Counter

    words = []
    for line in CORPUS:
        words += ["▁" + w for w in unicodedata.normalize("NFKC", line).split()]
    chars = Counter()
    subs = Counter()
    for w in words:
        chars.update(w)
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + 10) + 1):
                subs[w[i:j]] += 1
    n_pieces = VOCAB_SIZE - 4
    char_list = sorted(chars, key=lambda c: (-chars[c], c))
    cand = [p for p, c in subs.items() if c >= 2]
    cand.sort(key=lambda p: (-subs[p] * (len(p) - 1), p))
    chosen = cand[: n_pieces - len(char_list)]
    counts = {c: chars[c] for c in char_list}
    counts.update({p: subs[p] for p in chosen})
    total = sum(counts.values())
    pieces = sorted(counts, key=lambda p: (-counts[p], p))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, round(math.log(counts[p] / total), 6)) for p in pieces]
    return vocab


def build_tokenizer():
    tok = Tokenizer(models.Unigram(unigram_vocab(), unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    ids = {t: tok.token_to_id(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
    n = tok.get_vocab_size(with_added_tokens=True)
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": n - 1}, (ids, n)
    return tok


def with_template(tok, bert):
    t = Tokenizer.from_str(tok.to_str())
    if bert:
        single = "<s>:0 $A:0 </s>:0"
        pair = "<s>:0 $A:0 </s>:0 $B:1 </s>:1"
    else:  # exactly xlm-roberta-base's tokenizer.json template (all type ids 0)
        single = "<s> $A </s>"
        pair = "<s> $A </s> </s> $B </s>"
    t.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return t


def write_tokenizer(tok, folder, bert):
    folder.mkdir(parents=True, exist_ok=True)
    with_template(tok, bert).save(str(folder / "tokenizer.json"), pretty=True)
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    cfg = dict(specials)
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 64,
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]
            if bert
            else ["input_ids", "attention_mask"],
        }
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


# ----------------------------------------------------------------------------- models


def perturb_all(model, gen, scale=0.1):
    """Make every tensor non-trivial: LayerNorm weights 1+noise, all biases noisy, weights noisy."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.add_(noise)


def make_xlmr(vocab, gen):
    cfg = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        initializer_range=0.1,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(1234)
    m = XLMRobertaForSequenceClassification(cfg)
    perturb_all(m, gen)
    return m.eval()


def make_bert(vocab, gen):
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        pad_token_id=1,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        initializer_range=0.1,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(5678)
    m = BertForSequenceClassification(cfg)
    perturb_all(m, gen)
    return m.eval()


def load_base(folder):
    m = AutoModelForSequenceClassification.from_pretrained(str(folder))
    return m.eval()


# ----------------------------------------------------------------------------- PEFT models


def peft_config(method):
    if method == "prompt":
        return PromptTuningConfig(
            task_type=TaskType.SEQ_CLS, num_virtual_tokens=NUM_VIRTUAL, prompt_tuning_init=PromptTuningInit.RANDOM
        )
    if method == "prompt-encoder":
        return PromptEncoderConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=NUM_VIRTUAL,
            encoder_hidden_size=16,
            encoder_reparameterization_type="MLP",
        )
    if method == "lora":
        return LoraConfig(
            task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"]
        )
    raise ValueError(method)


def randomise_trainable(model, gen, scale=0.3):
    """Replace every trainable tensor by fresh noise (never PEFT's/HF's default init)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def build_method(family, method, base_dir, gen):
    base = load_base(base_dir)
    if method in ("prompt", "prompt-encoder", "lora"):
        model = get_peft_model(base, peft_config(method))
        randomise_trainable(model, gen)
    elif method == "head":
        model = base
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier."))
        randomise_trainable(model, gen)
    elif method == "full":
        model = base  # the base folder's own weights, so Rust can start from the folder alone
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(method)
    return model.eval()


# ----------------------------------------------------------------------------- inputs


def encode_batch(tok_dir, bert):
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    firsts = [a for a, _ in BATCH]
    seconds = [b for _, b in BATCH]
    encs = []
    for a, b in BATCH:
        encs.append(hf(a, b) if b is not None else hf(a))
    L = max(len(e["input_ids"]) for e in encs)
    ids, mask, tt = [], [], []
    for e in encs:
        n = len(e["input_ids"])
        ids.append(e["input_ids"] + [1] * (L - n))
        mask.append([1] * n + [0] * (L - n))
        if bert:
            tt.append(e["token_type_ids"] + [0] * (L - n))
    # cross-check against the raw tokenizers library (what the Rust side uses)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for (a, b), e in zip(BATCH, encs):
        r = raw.encode(a, b) if b is not None else raw.encode(a)
        assert r.ids == e["input_ids"], (r.ids, e["input_ids"])
        if bert:
            assert r.type_ids == e["token_type_ids"]
    out = {
        "input_ids": torch.tensor(ids, dtype=torch.int64),
        "attention_mask": torch.tensor(mask, dtype=torch.int64),
    }
    if bert:
        out["token_type_ids"] = torch.tensor(tt, dtype=torch.int64)
    return out, firsts, seconds


# ----------------------------------------------------------------------------- notes

COMMON_NOTES = {
    "mode": "model.eval() (no dropout); loss = mean cross-entropy over the batch (HF single_label_classification); "
    "grads are d(loss)/d(param) from one backward pass, all float32",
    "padding": "right padding with <pad>=1 to the longest sequence; attention_mask 1 for real tokens",
    "gelu": "exact erf GELU (hidden_act='gelu')",
}

XLMR_NOTES = {
    "layer_norm_eps": 1e-5,
    "position_ids_input_ids": "when called with input_ids (head/full/lora): create_position_ids_from_input_ids: "
    "pos = cumsum(ids != pad) * (ids != pad) + pad_id, i.e. real tokens get 2,3,4,... and <pad> tokens get 1",
    "position_ids_inputs_embeds": "when called with inputs_embeds (prompt/prompt-encoder, PEFT always passes "
    "inputs_embeds): create_position_ids_from_inputs_embeds: pos = arange(pad_id+1, pad_id+1+seq_len) = 2,3,...,"
    "P+L+1 for every row, ignoring padding (pad tokens get ordinary positions; they are masked as keys anyway, so "
    "for non-pad tokens it equals the input_ids rule shifted by P)",
    "token_type_ids": "not passed; the model uses its zero buffer (type_vocab_size 1)",
    "classifier": "RobertaClassificationHead on hidden[:, 0]: dropout -> dense(H->H) -> tanh -> dropout -> "
    "out_proj(H->labels); no pooler in XLMRobertaForSequenceClassification",
    "padding_idx_grads": "word_embeddings and position_embeddings are nn.Embedding(padding_idx=1): the row 1 "
    "gradient is always zero (full method)",
}

BERT_NOTES = {
    "layer_norm_eps": 1e-12,
    "position_ids": "arange(seq_len) from 0, also with inputs_embeds (virtual tokens get 0..P-1, text tokens P..)",
    "token_type_ids": "from the BERT template: 0 for <s> A </s>, 1 for B </s>; pad positions 0",
    "classifier": "BertPooler (dense H->H + tanh on hidden[:, 0]) -> dropout -> classifier Linear(H->labels). "
    "The pooler is part of the frozen backbone in every PEFT method and in 'head' (PEFT's modules_to_save for "
    "SEQ_CLS is ['classifier', 'score'], which matches only `classifier`)",
    "padding_idx_grads": "word_embeddings is nn.Embedding(padding_idx=1): its row 1 gradient is always zero (full "
    "method); position/token-type embeddings have no padding_idx",
}

PROMPT_NOTES = {
    "virtual_tokens": "PEFT prepends the P virtual-token embeddings BEFORE the whole tokenized input, i.e. before "
    "<s>: inputs_embeds = cat([prompt (P,H) repeated over batch, word_embeddings(input_ids)], dim=1). The raw "
    "word embeddings are concatenated; position/token-type embeddings and the embedding LayerNorm are applied "
    "afterwards by the model to the whole (P+L) sequence",
    "attention_mask": "cat([ones(B,P), attention_mask], dim=1)",
    "token_type_ids": "if given (BERT): cat([zeros(B,P), token_type_ids], dim=1); XLM-R: none passed",
    "classification_token": "the classifier reads hidden[:, 0], which is now the FIRST VIRTUAL TOKEN, not <s>",
    "frozen": "all backbone weights frozen; trainable = prompt parameters + a trainable copy of the classifier "
    "(ModulesToSaveWrapper: named 'classifier.modules_to_save.default.*'; 'classifier.original_module.*' keeps "
    "the frozen base copy and is unused in the forward pass)",
}


# ----------------------------------------------------------------------------- main work


def grads_and_names(model):
    names, shapes, grads = [], {}, {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            names.append(n)
            shapes[n] = list(p.shape)
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads["grad/" + n] = g.detach().to(torch.float32).contiguous().clone()
            # The value itself too, so a reimplementation can start from the exact same state
            # (the P-tuning MLP is not stored in PEFT's adapter file).
            grads["param/" + n] = p.detach().to(torch.float32).contiguous().clone()
    return names, shapes, grads


def forward(model, inputs, labels):
    kw = dict(inputs)
    out = model(**kw, labels=labels)
    return out


def adapter_key_map(model, method, saved_keys):
    """named_parameters() name -> key in adapter_model.safetensors (None if not stored as such)."""
    mapping = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = None
        if ".modules_to_save.default." in n:
            key = n.replace(".modules_to_save.default.", ".")
        elif ".lora_A.default." in n or ".lora_B.default." in n:
            key = n.replace(".default.", ".")
        elif n == "prompt_encoder.default.embedding.weight" and method == "prompt":
            key = "prompt_embeddings"
        if key is not None:
            assert key in saved_keys, (n, key, saved_keys)
        mapping[n] = key
    return mapping


def run_case(family, method, base_dir, tok_dir, gen):
    bert = family == "bert"
    model = build_method(family, method, base_dir, gen)
    inputs, firsts, seconds = encode_batch(tok_dir, bert)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    out = forward(model, inputs, labels)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(loss, out.loss, atol=1e-7), (loss, out.loss)
    out.loss.backward()
    names, shapes, grads = grads_and_names(model)

    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors["labels"] = labels
    tensors["logits"] = logits.detach().to(torch.float32).contiguous()
    tensors["loss"] = out.loss.detach().reshape(1).to(torch.float32)
    tensors.update(grads)

    meta = {
        "family": family,
        "method": method,
        "base_model": f"tiny-{family}",
        "texts": firsts,
        "text_pairs": seconds,
        "labels": LABELS,
        "grad_names": names,
        "grad_shapes": shapes,
        "num_trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "notes": dict(COMMON_NOTES, **(BERT_NOTES if bert else XLMR_NOTES)),
    }

    case = f"{family}-{method}"
    adir = FIX / "adapters" / case
    if method in ("prompt", "prompt-encoder", "lora"):
        with torch.no_grad():
            if method != "lora":
                prompt = model.get_prompt_embedding_to_save("default").to(torch.float32).contiguous()
                tensors["prompt_output"] = prompt
        model.save_pretrained(str(adir))
        (adir / "README.md").unlink(missing_ok=True)  # PEFT's model card, not needed
        # PEFT records the absolute path of the base folder; keep the fixtures machine-independent
        acfg_path = adir / "adapter_config.json"
        acfg = json.loads(acfg_path.read_text())
        acfg["base_model_name_or_path"] = f"tiny-{family}"
        if isinstance(acfg.get("target_modules"), list):  # PEFT stores a set: order varies with PYTHONHASHSEED
            acfg["target_modules"] = sorted(acfg["target_modules"])
        acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        saved = load_file(str(adir / "adapter_model.safetensors"))
        meta["adapter_keys"] = {k: list(v.shape) for k, v in sorted(saved.items())}
        meta["param_to_adapter_key"] = adapter_key_map(model, method, set(saved))
        meta["notes"].update(PROMPT_NOTES if method != "lora" else {})
        if method == "prompt":
            meta["notes"]["prompt_param"] = (
                "prompt_encoder.default.embedding.weight [P,H] (an nn.Embedding indexed by arange(P)); saved as "
                "'prompt_embeddings' [P,H]"
            )
        if method == "prompt-encoder":
            meta["notes"]["prompt_encoder_mlp"] = (
                "P-tuning MLP: prompt = mlp_head(embedding.weight) with mlp_head = Sequential(Linear(H->E) [0], "
                "ReLU [1], Linear(E->E) [2], ReLU [3], Linear(E->H) [4]), E = encoder_hidden_size = 16, H = token_dim; "
                "param names prompt_encoder.default.{embedding.weight [P,H], mlp_head.0.weight [E,H], "
                "mlp_head.0.bias [E], mlp_head.2.weight [E,E], mlp_head.2.bias [E], mlp_head.4.weight [H,E], "
                "mlp_head.4.bias [H]}"
            )
            meta["notes"]["prompt_encoder_saving"] = (
                "PEFT does NOT save the embedding or MLP weights: adapter_model.safetensors holds only "
                "'prompt_embeddings' [P,H] = mlp_head(embedding.weight) (the MLP output, stored here as "
                "`prompt_output`), plus the classifier. PeftModel.from_pretrained (inference_mode) builds no MLP and "
                "uses prompt_embeddings directly as the prompt. So an exported P-tuning adapter must contain the MLP "
                "output; MLP weights cannot be recovered from PEFT's file."
            )
        if method == "lora":
            meta["notes"]["lora"] = (
                "LoRA on every attention query and value Linear: y = W x + b + (B (A dropout(x))) * scaling, "
                "A = lora_A.default.weight [r, in], B = lora_B.default.weight [out, r], no LoRA bias, "
                "scaling = lora_alpha / r = 8/4 = 2.0 (use_rslora False; dropout 0.1 inactive in eval). "
                "Inputs are passed as input_ids, so positions follow the model's input_ids rule."
            )
            meta["notes"]["frozen"] = (
                "backbone frozen; trainable = lora_A/lora_B + a trainable copy of the classifier "
                "(classifier.modules_to_save.default.*)"
            )
    elif method == "head":
        adir.mkdir(parents=True, exist_ok=True)
        head = {
            n: p.detach().to(torch.float32).contiguous().clone()
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        save_file(head, str(adir / "head.safetensors"))
        meta["adapter_keys"] = {k: list(v.shape) for k, v in sorted(head.items())}
        meta["param_to_adapter_key"] = {n: n for n in head}
        meta["notes"]["head"] = (
            "only the classification head is trainable (randomised away from the base folder's values; the new "
            "values are in adapters/%s/head.safetensors under their HF names); BERT's pooler stays frozen" % case
        )
    else:
        meta["notes"]["full"] = (
            "every parameter trainable; the weights are exactly the base folder's (no adapter file); "
            "grad names are the HF names of the plain model"
        )
        meta["notes"]["key_bias_grads"] = (
            "attention.self.key.bias gradients are mathematically zero (adding a constant to every key score of a "
            "query row does not change the softmax); the stored values are float noise (~1e-9): compare them with "
            "an absolute tolerance"
        )

    (FIX / "refs").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIX / "refs" / f"{case}.safetensors"), metadata={"format": "pt"})
    (FIX / "refs" / f"{case}.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def prompt_text_init(xlmr_dir):
    res = {
        "init_text": INIT_TEXT,
        "tokenizer_name_or_path": "tiny-xlmr",
        "rule": "ids = tokenizer(init_text)['input_ids'] (special tokens included: <s> ... </s>), cut to P if longer, "
        "else repeated ceil(P/len) times and cut to P; prompt = word_embeddings.weight[ids] (float32)",
        "cases": {},
    }
    tensors = {}
    hf = AutoTokenizer.from_pretrained(str(xlmr_dir))
    full_ids = hf(INIT_TEXT)["input_ids"]
    raw = Tokenizer.from_file(str(xlmr_dir / "tokenizer.json"))
    assert raw.encode(INIT_TEXT).ids == full_ids
    res["tokenized_init_text"] = {"ids": full_ids, "tokens": hf.convert_ids_to_tokens(full_ids)}
    for p in (1, 12):
        base = load_base(xlmr_dir)
        cfg = PromptTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=p,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=INIT_TEXT,
            tokenizer_name_or_path=str(xlmr_dir),
        )
        model = get_peft_model(base, cfg)
        emb = model.prompt_encoder["default"].embedding.weight.detach().to(torch.float32).contiguous().clone()
        wte = base.roberta.embeddings.word_embeddings.weight.detach()
        # recover the ids PEFT used (exact row matches), and check against the documented rule
        used = []
        for row in emb:
            hits = torch.nonzero(torch.all(wte == row, dim=1)).flatten().tolist()
            assert len(hits) >= 1
            used.append(hits[0])
        expect = (full_ids * ((p + len(full_ids) - 1) // len(full_ids)))[:p]
        assert used == expect, (used, expect)
        res["cases"][str(p)] = {"num_virtual_tokens": p, "init_token_ids": used}
        tensors[f"prompt_init_{p}"] = emb
    save_file(tensors, str(FIX / "refs" / "prompt-text-init.safetensors"), metadata={"format": "pt"})
    res["safetensors_keys"] = {k: list(v.shape) for k, v in tensors.items()}
    (FIX / "refs" / "prompt-text-init.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


def tokenization_refs(xlmr_dir, bert_dir):
    samples = [
        ("Hello world", None),
        ("Le marché a chuté.", None),
        ("Сегодня хорошая погода", "Habari za asubuhi"),
        ("  Multiple   spaces and ﬁ ligature ①", None),
        ("Unknown: Ωμέγα 漢字", None),
    ]
    out = {"note": "ids/type_ids/offsets from tokenizers' Tokenizer.encode(a, b) with add_special_tokens=True", "cases": []}
    for a, b in samples:
        case = {"text": a, "text_pair": b}
        for fam, d in (("xlmr", xlmr_dir), ("bert", bert_dir)):
            raw = Tokenizer.from_file(str(d / "tokenizer.json"))
            e = raw.encode(a, b) if b is not None else raw.encode(a)
            case[fam] = {"ids": e.ids, "type_ids": e.type_ids, "tokens": e.tokens, "offsets": e.offsets}
        out["cases"].append(case)
    (FIX / "refs" / "tokenization.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- verification


def verify():
    for family in ("xlmr", "bert"):
        base_dir = FIX / f"tiny-{family}"
        for method in METHODS:
            case = f"{family}-{method}"
            refs = load_file(str(FIX / "refs" / f"{case}.safetensors"))
            meta = json.loads((FIX / "refs" / f"{case}.json").read_text())
            assert set(k[5:] for k in refs if k.startswith("grad/")) == set(meta["grad_names"]), case
            inputs = {k: refs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in refs}
            base = load_base(base_dir)
            if method in ("prompt", "prompt-encoder", "lora"):
                model = PeftModel.from_pretrained(base, str(FIX / "adapters" / case)).eval()
            elif method == "head":
                head = load_file(str(FIX / "adapters" / case / "head.safetensors"))
                missing, unexpected = base.load_state_dict(head, strict=False)
                assert not unexpected
                model = base
            else:
                model = base
            with torch.no_grad():
                logits = model(**inputs).logits
            diff = (logits - refs["logits"]).abs().max().item()
            print(f"verify {case:22s} max|dlogits| = {diff:.3e}  loss={refs['loss'].item():.6f}")
            assert diff <= 1e-6, (case, diff)
            # the sharded folder must give the same as the single-file one
        sh = load_base(FIX / "tiny-xlmr-sharded")
        one = load_base(FIX / "tiny-xlmr")
        sd1, sd2 = one.state_dict(), sh.state_dict()
        assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    load_file(str(FIX / "refs" / "prompt-text-init.safetensors"))
    print("verify: all refs reload; adapters reproduce logits to 1e-6; sharded == single")


def main():
    FIX.mkdir(parents=True, exist_ok=True)
    for g in GENERATED:
        shutil.rmtree(FIX / g, ignore_errors=True)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    write_tokenizer(tok, FIX / "tokenizer", bert=False)

    gen = torch.Generator().manual_seed(20240501)
    xlmr = make_xlmr(vocab, gen)
    xdir = FIX / "tiny-xlmr"
    xlmr.save_pretrained(str(xdir))
    write_tokenizer(tok, xdir, bert=False)
    sdir = FIX / "tiny-xlmr-sharded"
    xlmr.save_pretrained(str(sdir), max_shard_size="40KB")
    write_tokenizer(tok, sdir, bert=False)
    assert (sdir / "model.safetensors.index.json").exists()
    assert len(list(sdir.glob("model-*.safetensors"))) >= 2

    bert = make_bert(vocab, gen)
    bdir = FIX / "tiny-bert"
    bert.save_pretrained(str(bdir))
    write_tokenizer(tok, bdir, bert=True)

    summary = {}
    for family, d in (("xlmr", xdir), ("bert", bdir)):
        for method in METHODS:
            case_gen = torch.Generator().manual_seed(hash_seed(f"{family}-{method}"))
            meta = run_case(family, method, d, d, case_gen)
            summary[f"{family}-{method}"] = meta["grad_shapes"]
            print(f"{family}-{method}: {len(meta['grad_names'])} trainable tensors, {meta['num_trainable']} values")

    prompt_text_init(xdir)
    tokenization_refs(xdir, bdir)

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "generator": "scripts/make_parity_fixtures.py",
    }
    (FIX / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    verify()


def hash_seed(s):
    # stable across runs (Python's hash() is salted)
    h = 0
    for c in s.encode():
        h = (h * 131 + c) % 2_147_483_647
    return h


if __name__ == "__main__":
    main()
