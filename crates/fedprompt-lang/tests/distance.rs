//! Distance arithmetic on NumPy-written fixtures (tests/fixtures/make_fixtures.py), code
//! resolution, errors, and (with `FEDPROMPT_LANG2VEC_DIR`) the real lang2vec data.

use std::io::Write;
use std::path::{Path, PathBuf};

use fedprompt_lang::npy::{read_npz, write_npy, NpyArray, NpyData};
use fedprompt_lang::{
    markdown_table, DistanceOptions, FeatureGroup, FeatureSource, LangError, LanguageDistance,
    MissingValues, PretrainingMix, ScriptVariants,
};

const EPS: f64 = 1e-12;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(options: &DistanceOptions) -> LanguageDistance {
    LanguageDistance::load(fixtures(), options).unwrap()
}

fn custom(mix: &[(&str, f64)], source: FeatureSource, missing: MissingValues) -> DistanceOptions {
    DistanceOptions {
        source,
        missing,
        mix: PretrainingMix::Custom(mix.iter().map(|&(c, t)| (c.to_string(), t)).collect()),
        ..DistanceOptions::default()
    }
}

fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() < EPS, "got {got}, want {want}");
}

#[test]
fn npz_reader_reads_numpy_output() {
    let arrays = read_npz(&fixtures().join("features.npz"), None).unwrap();
    assert_eq!(
        arrays.keys().collect::<Vec<_>>(),
        ["data", "feats", "langs", "sources"]
    );
    assert_eq!(arrays["data"].shape, [5, 4, 2]);
    assert_eq!(
        arrays["langs"].as_strings().unwrap(),
        ["eng", "fra", "hin", "yor", "nav"]
    );
    assert_eq!(arrays["sources"].as_strings().unwrap(), ["WALS", "SSWL"]);
    let NpyData::F32(data) = &arrays["data"].data else {
        panic!("expected f4 data");
    };
    // eng, S_X: [1, -1]; eng, P_Z: [0, 1]
    assert_eq!(&data[0..2], &[1.0, -1.0]);
    assert_eq!(&data[4..6], &[0.0, 1.0]);
    let avg = read_npz(&fixtures().join("feature_averages.npz"), Some(&["data"])).unwrap();
    assert_eq!(avg.len(), 1);
    assert!(matches!(avg["data"].data, NpyData::F64(_)));
}

#[test]
fn default_options_match_hand_computation() {
    let ld = load(&DistanceOptions::default());
    assert_eq!(ld.feature_names(), ["S_X", "S_Y", "P_Z", "INV_W"]);
    // CC-100 rows present in the fixture: en 55608, fr 9780, hi 1715 + hi_rom 88 (folded).
    let p = ld.pretraining_languages();
    let got: Vec<(&str, f64)> = p.iter().map(|l| (l.iso3.as_str(), l.tokens_m)).collect();
    assert_eq!(got, [("eng", 55608.0), ("fra", 9780.0), ("hin", 1803.0)]);
    let total = 55608.0 + 9780.0 + 1803.0;
    assert_close(p[0].weight, 55608.0 / total);
    // 100 CC-100 rows, 4 used (en, fr, hi, hi_rom): the rest lack a fixture vector.
    assert_eq!(ld.skipped().len(), 96);
    assert!(ld
        .skipped()
        .iter()
        .all(|s| s.reason.contains("not in the URIEL")));

    // Vectors in (S_X, S_Y, P_Z, INV_W): eng (1,0,1,0), fra (1,0,0,1), hin (0,1,1,1).
    let vp = [
        (55608.0 + 9780.0) / total,
        1803.0 / total,
        (55608.0 + 1803.0) / total,
        (9780.0 + 1803.0) / total,
    ];
    for (g, w) in ld.pretraining_vector().iter().zip(vp) {
        assert_close(*g, w);
    }
    let norm_vp = vp.iter().map(|x| x * x).sum::<f64>().sqrt();
    // yor (0,1,1,0), nav (1,1,1,1), eng (1,0,1,0)
    let cos_yor = (vp[1] + vp[2]) / (2f64.sqrt() * norm_vp);
    let cos_nav = vp.iter().sum::<f64>() / (2.0 * norm_vp);
    let cos_eng = (vp[0] + vp[2]) / (2f64.sqrt() * norm_vp);
    assert_close(ld.cosine("yor").unwrap(), cos_yor);
    assert_close(ld.phi("yo").unwrap(), -cos_yor.ln());
    assert_close(ld.phi("nav").unwrap(), -cos_nav.ln());
    assert_close(ld.phi("en").unwrap(), -cos_eng.ln());
    // Independent decimal check (Python/NumPy): φ(yor) = 0.74048942...
    assert!((ld.phi("yor").unwrap() - 0.740_489_42).abs() < 1e-8);
}

#[test]
fn skipping_script_variants_changes_weights() {
    let ld = load(&DistanceOptions {
        script_variants: ScriptVariants::Skip,
        ..DistanceOptions::default()
    });
    let hin = ld
        .pretraining_languages()
        .iter()
        .find(|l| l.iso3 == "hin")
        .unwrap();
    assert_eq!(hin.tokens_m, 1715.0);
    let variants: Vec<&str> = ld
        .skipped()
        .iter()
        .filter(|s| s.reason.contains("script variant"))
        .map(|s| s.code.as_str())
        .collect();
    assert_eq!(
        variants,
        ["bn_rom", "hi_rom", "my_zaw", "ta_rom", "te_rom", "ur_rom", "zh_hant"]
    );
}

#[test]
fn missing_values_ignore_zero_and_fill() {
    let mix = [("en", 3.0), ("fr", 1.0)];
    // Averages in (S_X, S_Y, P_Z, INV_W): eng (1, 0, .5, ?), fra (?, .5, 0, 1), yor (.5, ?, 1, ?).
    let ignore = load(&custom(&mix, FeatureSource::Average, MissingValues::Ignore));
    let vp = ignore.pretraining_vector();
    for (g, w) in vp.iter().zip([1.0, 0.125, 0.375, 1.0]) {
        assert_close(*g, w);
    }
    let cos = (0.5 + 0.375) / (1.25f64.sqrt() * (1.0f64 + 0.140625).sqrt());
    assert_close(ignore.phi("yor").unwrap(), -cos.ln());
    assert!(ignore.vector("yor").unwrap()[1].is_nan());

    let zero = load(&custom(&mix, FeatureSource::Average, MissingValues::Zero));
    for (g, w) in zero
        .pretraining_vector()
        .iter()
        .zip([0.75, 0.125, 0.375, 0.25])
    {
        assert_close(*g, w);
    }
    let cos = 0.75 / (1.25f64.sqrt() * 0.78125f64.sqrt());
    assert_close(zero.phi("yor").unwrap(), -cos.ln());

    // Gaps take the k-NN predictions: eng INV_W 0, fra S_X 1, yor S_Y 1 and INV_W 0.
    let fill = load(&custom(
        &mix,
        FeatureSource::Average,
        MissingValues::FillPredicted,
    ));
    for (g, w) in fill
        .pretraining_vector()
        .iter()
        .zip([1.0, 0.125, 0.375, 0.25])
    {
        assert_close(*g, w);
    }
    let cos = 1.0 / (1.5 * 1.21875f64.sqrt());
    assert_close(fill.phi("yor").unwrap(), -cos.ln());

    // nav has no known average: no distance under Ignore or Zero.
    for ld in [&ignore, &zero] {
        assert!(matches!(ld.phi("nav"), Err(LangError::NoFeatures { iso3 }) if iso3 == "nav"));
    }
    assert!(fill.phi("nav").is_ok());
}

#[test]
fn union_takes_source_maximum_and_self_distance_is_zero() {
    let ld = load(&custom(
        &[("eng", 1.0)],
        FeatureSource::Union,
        MissingValues::Ignore,
    ));
    let v = ld.vector("eng").unwrap();
    assert_eq!(&v[..3], &[1.0, 0.0, 1.0]);
    assert!(v[3].is_nan());
    let phi = ld.phi("eng").unwrap();
    assert!((0.0..EPS).contains(&phi), "{phi}");
    // fra (1, 0, 0, 1) against V_p (1, 0, 1, ?): cos over three known features = 1/√2.
    assert_close(ld.phi("fra").unwrap(), 0.5 * 2f64.ln());
    assert!(matches!(ld.phi("hin"), Err(LangError::NoFeatures { .. })));
}

#[test]
fn groups_select_by_prefix_in_given_order() {
    let ld = load(&DistanceOptions {
        groups: vec![
            FeatureGroup::Inventory,
            FeatureGroup::Syntax,
            FeatureGroup::Inventory,
        ],
        ..DistanceOptions::default()
    });
    assert_eq!(ld.feature_names(), ["INV_W", "S_X", "S_Y"]);
    assert_eq!(ld.vector("fra").unwrap(), [1.0, 1.0, 0.0]);
}

#[test]
fn codes_resolve_and_unknown_codes_suggest() {
    let ld = load(&DistanceOptions::default());
    for code in ["en", "EN", " eng ", "Eng"] {
        assert_eq!(ld.resolve(code).unwrap().iso3, "eng");
    }
    let yo = ld.resolve("yo").unwrap();
    assert_eq!(
        (yo.iso1.as_deref(), yo.name.as_str()),
        (Some("yo"), "Yoruba")
    );
    // In URIEL but not in iso639.csv: accepted, named by its code.
    let nav = ld.resolve("nav").unwrap();
    assert_eq!((nav.iso1, nav.name.as_str()), (None, "nav"));

    let err = ld.phi("engl").unwrap_err();
    assert!(matches!(&err, LangError::UnknownLanguage { code, .. } if code == "engl"));
    assert!(
        err.to_string().contains("did you mean en (English)"),
        "{err}"
    );
    let err = ld.resolve("swahili").unwrap_err().to_string();
    assert!(err.contains("sw (Swahili)"), "{err}");
    let err = ld.resolve("").unwrap_err();
    assert!(matches!(err, LangError::UnknownLanguage { .. }));
    // In iso639.csv but absent from this (fixture) URIEL.
    let err = ld.phi("de").unwrap_err();
    assert!(
        matches!(&err, LangError::NotInUriel { iso3, .. } if iso3 == "deu"),
        "{err}"
    );
}

#[test]
fn table_sorts_dedups_and_renders() {
    let ld = load(&DistanceOptions::default());
    let rows = ld.table(&["yor", "en", "hi", "eng", "fr"]).unwrap();
    let order: Vec<&str> = rows.iter().map(|r| r.iso3.as_str()).collect();
    let mut by_phi = order.clone();
    by_phi.sort_by(|a, b| ld.phi(a).unwrap().total_cmp(&ld.phi(b).unwrap()));
    assert_eq!(order, by_phi);
    assert_eq!(rows.len(), 4);
    let hin = rows.iter().find(|r| r.iso3 == "hin").unwrap();
    assert!(hin.in_pretraining);
    assert_eq!(hin.pretraining_tokens_m, 1803.0);
    let yor = rows.iter().find(|r| r.iso3 == "yor").unwrap();
    assert!(!yor.in_pretraining);
    assert_eq!(yor.pretraining_tokens_m, 0.0);
    assert_close(yor.cosine, (-yor.phi).exp());

    let md = markdown_table(&rows);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 2 + rows.len());
    assert!(lines[0].starts_with("| Language | ISO 639-1 | ISO 639-3 | φ |"));
    let yor_line = lines.iter().find(|l| l.contains("| yor |")).unwrap();
    assert!(yor_line.starts_with("| Yoruba | yo | yor | "));
    assert!(yor_line.ends_with("| — |"));
    assert!(lines.iter().any(|l| l.ends_with("| 1803 |")));
    assert!(ld.table(&["en", "zz"]).is_err());
}

#[test]
fn invalid_options_and_mixes_are_errors() {
    let dir = fixtures();
    let empty = DistanceOptions {
        groups: vec![],
        ..DistanceOptions::default()
    };
    assert!(matches!(
        LanguageDistance::load(&dir, &empty),
        Err(LangError::InvalidOptions(_))
    ));
    let bad_tokens = custom(
        &[("en", 0.0)],
        FeatureSource::Predicted,
        MissingValues::Ignore,
    );
    assert!(matches!(
        LanguageDistance::load(&dir, &bad_tokens),
        Err(LangError::InvalidOptions(_))
    ));
    let unknown = custom(
        &[("qq", 1.0)],
        FeatureSource::Predicted,
        MissingValues::Ignore,
    );
    assert!(matches!(
        LanguageDistance::load(&dir, &unknown),
        Err(LangError::UnknownLanguage { .. })
    ));
    // nav knows no average feature, so V_p would be empty.
    let hollow = custom(
        &[("nav", 1.0)],
        FeatureSource::Average,
        MissingValues::Ignore,
    );
    assert!(matches!(
        LanguageDistance::load(&dir, &hollow),
        Err(LangError::EmptyPretraining)
    ));
}

#[test]
fn options_deserialize_with_defaults() {
    let o: DistanceOptions =
        serde_json::from_str(r#"{"source": "union", "missing": "fill_predicted"}"#).unwrap();
    assert_eq!(o.source, FeatureSource::Union);
    assert_eq!(o.missing, MissingValues::FillPredicted);
    assert_eq!(o.groups.len(), 3);
    assert!(o.apply_errata);
    let o: DistanceOptions =
        serde_json::from_str(r#"{"mix": {"custom": [["en", 2.5]]}, "groups": ["syntax"]}"#)
            .unwrap();
    assert_eq!(o.mix, PretrainingMix::Custom(vec![("en".into(), 2.5)]));
    assert!(serde_json::from_str::<DistanceOptions>(r#"{"sauce": "union"}"#).is_err());
}

// ---- malformed archives ----

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in members {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn strings(v: &[&str]) -> Vec<u8> {
    write_npy(&NpyArray {
        shape: vec![v.len()],
        data: NpyData::Str(v.iter().map(|s| s.to_string()).collect()),
    })
}

fn floats(shape: &[usize], v: Vec<f32>) -> Vec<u8> {
    write_npy(&NpyArray {
        shape: shape.to_vec(),
        data: NpyData::F32(v),
    })
}

#[test]
fn malformed_data_dirs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = custom(
        &[("eng", 1.0)],
        FeatureSource::Predicted,
        MissingValues::Ignore,
    );
    let pred = dir.path().join("feature_predictions.npz");

    let err = LanguageDistance::load(dir.path(), &opts).unwrap_err();
    assert!(
        matches!(&err, LangError::Io { path, .. } if *path == pred),
        "{err}"
    );

    std::fs::write(&pred, b"not a zip").unwrap();
    let err = LanguageDistance::load(dir.path(), &opts).unwrap_err();
    assert!(matches!(err, LangError::Zip { .. }), "{err}");

    write_npz(
        &pred,
        &[
            ("data.npy", floats(&[1, 1, 1], vec![1.0])),
            ("langs.npy", strings(&["eng"])),
        ],
    );
    let err = LanguageDistance::load(dir.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("no `feats` array"), "{err}");

    write_npz(
        &pred,
        &[
            ("data.npy", floats(&[1, 2, 1], vec![1.0, 0.0])),
            ("langs.npy", strings(&["eng"])),
            ("feats.npy", strings(&["S_A"])),
        ],
    );
    let err = LanguageDistance::load(dir.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("disagrees"), "{err}");

    write_npz(
        &pred,
        &[
            ("data.npy", floats(&[1, 1, 1], vec![1.0])),
            ("langs.npy", strings(&["eng"])),
            ("feats.npy", strings(&["S_A"])),
        ],
    );
    let err = LanguageDistance::load(dir.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("no `P_` features"), "{err}");
    let syntax_only = DistanceOptions {
        groups: vec![FeatureGroup::Syntax],
        ..opts.clone()
    };
    let ld = LanguageDistance::load(dir.path(), &syntax_only).unwrap();
    assert!(ld.phi("en").unwrap().abs() < EPS);

    // FillPredicted needs the predictions to share the averages' layout.
    write_npz(
        &dir.path().join("feature_averages.npz"),
        &[
            ("data.npy", floats(&[1, 1, 1], vec![-1.0])),
            ("langs.npy", strings(&["fra"])),
            ("feats.npy", strings(&["S_A"])),
        ],
    );
    let fill = DistanceOptions {
        source: FeatureSource::Average,
        missing: MissingValues::FillPredicted,
        mix: PretrainingMix::Custom(vec![("fra".into(), 1.0)]),
        ..syntax_only
    };
    let err = LanguageDistance::load(dir.path(), &fill).unwrap_err();
    assert!(matches!(err, LangError::Layout { .. }), "{err}");
}

// ---- the real lang2vec 1.1.2 data ----

/// φ from lang2vec 1.1.2 + NumPy (`syntax_knn+phonology_knn+inventory_knn`, CC-100 weights with
/// errata, script variants folded), computed independently of this crate.
const PYTHON_PHI: [(&str, f64); 17] = [
    ("eng", 0.088951),
    ("fra", 0.136125),
    ("spa", 0.164664),
    ("deu", 0.115488),
    ("ell", 0.165183),
    ("bul", 0.105928),
    ("rus", 0.122517),
    ("tur", 0.283208),
    ("ara", 0.228179),
    ("vie", 0.238080),
    ("tha", 0.226362),
    ("zho", 0.256676),
    ("hin", 0.244289),
    ("swa", 0.272084),
    ("urd", 0.243132),
    ("hau", 0.235466),
    ("yor", 0.256665),
];

#[test]
fn real_lang2vec_data() {
    let Ok(dir) = std::env::var("FEDPROMPT_LANG2VEC_DIR") else {
        eprintln!("FEDPROMPT_LANG2VEC_DIR not set; skipping the real-data check");
        return;
    };
    let ld = LanguageDistance::load(&dir, &DistanceOptions::default()).unwrap();
    assert_eq!(ld.feature_names().len(), 289);
    assert_eq!(ld.pretraining_languages().len(), 93);
    assert!(ld.skipped().is_empty(), "{:?}", ld.skipped());
    let wsum: f64 = ld.pretraining_languages().iter().map(|l| l.weight).sum();
    assert!((wsum - 1.0).abs() < 1e-12);
    assert_eq!(ld.pretraining_languages()[0].iso3, "eng");
    for (code, want) in PYTHON_PHI {
        let got = ld.phi(code).unwrap();
        assert!((got - want).abs() < 1e-5, "{code}: {got} vs {want}");
    }
    // English is the closest XNLI language; Yoruba and Swahili are farther.
    let xnli = [
        "en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur",
    ];
    let rows = ld.table(&xnli).unwrap();
    assert_eq!(rows.len(), 15);
    assert_eq!(rows[0].iso3, "eng");
    assert!(ld.phi("en").unwrap() < ld.phi("yo").unwrap());
    assert!(ld.phi("fr").unwrap() < ld.phi("sw").unwrap());
    for source in [FeatureSource::Average, FeatureSource::Union] {
        let o = DistanceOptions {
            source,
            ..DistanceOptions::default()
        };
        let ld = LanguageDistance::load(&dir, &o).unwrap();
        assert!(ld.phi("en").unwrap() < ld.phi("yo").unwrap(), "{source:?}");
    }
}
