//! Readers on fixture files in the real formats, and their error paths.

use std::path::{Path, PathBuf};

use fedprompt_data::{
    read_generic, read_masakhanews, read_xglue_nc, read_xnli, scan_labels, select_languages,
    DataError, Example, FileFormat, GenericFormat, LabelMap, MasakhaInput, ReadOptions,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

const STRICT: ReadOptions = ReadOptions {
    skip_bad_lines: false,
};
const SKIP: ReadOptions = ReadOptions {
    skip_bad_lines: true,
};

/// Writes `contents` to `name` in a fresh temp dir.
fn temp_file(name: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, contents).unwrap();
    (dir, p)
}

#[test]
fn xnli_dev_reads_all_languages_with_quotes_intact() {
    let out = read_xnli(fixture("xnli/xnli.dev.tsv"), None, &STRICT).unwrap();
    assert!(out.warnings.is_empty());
    assert_eq!(out.examples.len(), 6);
    let m = LabelMap::xnli();
    assert_eq!(
        out.examples[0],
        Example::pair(
            "The \"old\" bridge was closed for repairs last spring.",
            "The bridge reopened in autumn.",
            m.index("neutral").unwrap(),
            "en"
        )
    );
    let langs: Vec<&str> = out.examples.iter().map(|e| e.language.as_str()).collect();
    assert_eq!(langs, ["en", "en", "en", "de", "de", "fr"]);
    assert_eq!(out.examples[1].label, 2, "contradiction is index 2");
    assert_eq!(out.examples[4].text, "Er sagte \"vielleicht morgen\".");
}

#[test]
fn xnli_dev_language_filter() {
    let de = read_xnli(fixture("xnli/xnli.dev.tsv"), Some("de"), &STRICT).unwrap();
    assert_eq!(de.examples.len(), 2);
    assert!(de.examples.iter().all(|e| e.language == "de"));
    let err = read_xnli(fixture("xnli/xnli.dev.tsv"), Some("sw"), &STRICT).unwrap_err();
    assert!(
        matches!(err, DataError::EmptyLanguage { ref language } if language == "sw"),
        "{err}"
    );
}

#[test]
fn xnli_train_maps_contradictory_and_takes_language_from_name() {
    let out = read_xnli(fixture("xnli/multinli.train.de.tsv"), None, &STRICT).unwrap();
    let labels: Vec<usize> = out.examples.iter().map(|e| e.label).collect();
    assert_eq!(labels, [0, 2, 1, 2]);
    assert!(out.examples.iter().all(|e| e.language == "de"));
    assert_eq!(
        out.examples[0].text,
        "Die Katze schläft auf dem \"warmen\" Sofa."
    );
    assert_eq!(
        out.examples[0].text_pair.as_deref(),
        Some("Ein Tier ruht sich aus.")
    );
    let over = read_xnli(fixture("xnli/multinli.train.de.tsv"), Some("xx"), &STRICT).unwrap();
    assert!(over.examples.iter().all(|e| e.language == "xx"));
}

#[test]
fn xnli_errors_name_file_and_line() {
    let (_d, p) = temp_file(
        "multinli.train.fr.tsv",
        b"premise\thypo\tlabel\nA.\tB.\tentailment\nC.\tD.\tmaybe\nE.\tF.\n",
    );
    let err = read_xnli(&p, None, &STRICT).unwrap_err();
    match &err {
        DataError::UnknownLabel {
            path, line, label, ..
        } => {
            assert_eq!(path, &p);
            assert_eq!(*line, 3);
            assert_eq!(label, "maybe");
        }
        other => panic!("wrong error {other}"),
    }
    assert!(err.to_string().contains("multinli.train.fr.tsv:3"), "{err}");
    // With skip_bad_lines both bad lines become warnings.
    let out = read_xnli(&p, None, &SKIP).unwrap();
    assert_eq!(out.examples.len(), 1);
    assert_eq!(out.warnings.len(), 2);
    assert_eq!(out.warnings[0].line, Some(3));
    assert_eq!(out.warnings[1].line, Some(4));
    assert!(
        out.warnings[1].message.contains("expected 3"),
        "{}",
        out.warnings[1]
    );
    // The warning names its file and line once (the skipped error's own prefix is dropped).
    let shown = out.warnings[1].to_string();
    assert_eq!(
        shown.matches("multinli.train.fr.tsv:4").count(),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("multinli.train.fr.tsv:4: skipped: "),
        "{shown}"
    );

    let (_d, p) = temp_file("x.tsv", b"premise\tlabel\nA.\tentailment\n");
    let err = read_xnli(&p, Some("fr"), &STRICT).unwrap_err();
    assert!(
        matches!(err, DataError::MissingColumn { ref column, .. } if column == "hypo"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_reports_its_line_and_can_be_skipped() {
    let (_d, p) = temp_file(
        "xglue.nc.fr.dev",
        b"Titre\tCorps\tsports\nMauvais \xff\tCorps\tnews\nAutre\tTexte\tnews\n",
    );
    let m = LabelMap::xglue_nc();
    let err = read_xglue_nc(&p, None, &m, &STRICT).unwrap_err();
    assert!(
        matches!(err, DataError::InvalidUtf8 { line: 2, .. }),
        "{err}"
    );
    let out = read_xglue_nc(&p, None, &m, &SKIP).unwrap();
    assert_eq!(out.examples.len(), 2);
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].message.contains("invalid UTF-8"));
}

#[test]
fn xglue_nc_reads_title_body_category() {
    let m = LabelMap::xglue_nc();
    let out = read_xglue_nc(fixture("xglue/xglue.nc.de.dev"), None, &m, &STRICT).unwrap();
    assert_eq!(out.examples.len(), 4);
    assert!(out.examples.iter().all(|e| e.language == "de"));
    let e = &out.examples[1];
    assert_eq!(e.text, "Rezept: Apfelkuchen");
    assert_eq!(
        e.text_pair.as_deref(),
        Some("Ein \"einfacher\" Kuchen für den Sonntag.")
    );
    assert_eq!(m.name(e.label), Some("foodanddrink"));
    // CRLF endings are accepted.
    let en = read_xglue_nc(fixture("xglue/xglue.nc.en.train"), None, &m, &STRICT).unwrap();
    assert_eq!(
        en.examples[2].text_pair.as_deref(),
        Some("Doctors advise getting vaccinated now.")
    );
    assert_eq!(m.name(en.examples[2].label), Some("health"));
}

#[test]
fn xglue_unlabelled_line_is_an_error() {
    let (_d, p) = temp_file("xglue.nc.de.test", b"Titel\tText\n");
    let err = read_xglue_nc(&p, None, &LabelMap::xglue_nc(), &STRICT).unwrap_err();
    assert!(matches!(err, DataError::BadLine { line: 1, .. }), "{err}");
}

#[test]
fn empty_file_is_an_error_even_when_skipping() {
    let (_d, p) = temp_file("xglue.nc.de.dev", b"");
    let err = read_xglue_nc(&p, None, &LabelMap::xglue_nc(), &SKIP).unwrap_err();
    assert!(matches!(err, DataError::EmptyFile { .. }), "{err}");
    // A file whose every line is bad is empty after skipping.
    let (_d, p) = temp_file("xglue.nc.de.dev", b"a\tb\tnot-a-category\n");
    let err = read_xglue_nc(&p, None, &LabelMap::xglue_nc(), &SKIP).unwrap_err();
    assert!(matches!(err, DataError::EmptyFile { .. }), "{err}");
}

#[test]
fn masakhanews_joins_headline_and_text() {
    let m = LabelMap::masakhanews();
    let out = read_masakhanews(
        fixture("masakhanews/hau/train.tsv"),
        None,
        MasakhaInput::HeadlineText,
        &m,
        &STRICT,
    )
    .unwrap();
    assert_eq!(out.examples.len(), 4);
    assert!(out.examples.iter().all(|e| e.language == "ha"));
    assert_eq!(
        out.examples[0].text,
        "Kungiyar ta ci wasa Kungiyar kwallon kafa ta ci wasan karshe a ranar Asabar."
    );
    // A quoted field keeps its newline and its quotes.
    assert!(out.examples[1].text.contains("lumana.\nMutane"));
    assert!(out.examples[2].text.contains("\"a yi rigakafi\""));
    assert_eq!(m.name(out.examples[3].label), Some("business"));

    let pair = read_masakhanews(
        fixture("masakhanews/yor/dev.tsv"),
        None,
        MasakhaInput::Pair,
        &m,
        &STRICT,
    )
    .unwrap();
    assert_eq!(pair.examples[1].text, "Foonu tuntun");
    assert_eq!(
        pair.examples[1].text_pair.as_deref(),
        Some("Ile-ise naa gbe foonu tuntun\tjade loni.")
    );
    assert_eq!(pair.examples[1].language, "yo");
}

#[test]
fn masakhanews_missing_column() {
    let (_d, p) = temp_file(
        "eng/train.tsv",
        b"category\theadline\turl\nsports\tX\thttp://x\n",
    );
    let err = read_masakhanews(
        &p,
        None,
        MasakhaInput::HeadlineText,
        &LabelMap::masakhanews(),
        &SKIP,
    )
    .unwrap_err();
    match err {
        DataError::MissingColumn { column, found, .. } => {
            assert_eq!(column, "text");
            assert_eq!(found, "category, headline, url");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn generic_csv_with_mapping_and_fixed_language_fallback() {
    let fmt = GenericFormat {
        text: "sentence".into(),
        label: "label".into(),
        language_column: Some("lang".into()),
        fixed_language: Some("en".into()),
        ..GenericFormat::default()
    };
    let p = fixture("generic/reviews.csv");
    let labels = scan_labels(&[&p], &fmt).unwrap();
    assert_eq!(labels.names(), ["negative", "positive"]);
    let out = read_generic(&p, &fmt, &labels, &STRICT).unwrap();
    assert_eq!(out.examples.len(), 4);
    assert_eq!(
        out.examples[0].text,
        "Great phone, \"excellent\" battery, would buy again"
    );
    assert_eq!(out.examples[1].label, 0);
    assert_eq!(out.examples[2].language, "es");
    // Empty language cell: the fixed language.
    assert_eq!(out.examples[3].language, "en");
    assert_eq!(
        out.examples[3].text,
        "Multi-line\nreview text, fine overall"
    );
}

#[test]
fn generic_hf_jsonl_int_labels_are_indices() {
    let fmt = GenericFormat {
        text: "premise".into(),
        text_pair: Some("hypothesis".into()),
        language_column: Some("language".into()),
        ..GenericFormat::default()
    };
    let p = fixture("generic/hf_export.jsonl");
    assert_eq!(FileFormat::from_path(&p), Some(FileFormat::Jsonl));
    let out = read_generic(&p, &fmt, &LabelMap::xnli(), &STRICT).unwrap();
    let got: Vec<(usize, &str)> = out
        .examples
        .iter()
        .map(|e| (e.label, e.language.as_str()))
        .collect();
    assert_eq!(got, [(0, "en"), (2, "fr"), (1, "de")]);
    assert_eq!(
        out.examples[1].text_pair.as_deref(),
        Some("Personne ne joue.")
    );
    // Scanned from ints: names "0".."2".
    assert_eq!(scan_labels(&[&p], &fmt).unwrap().names(), ["0", "1", "2"]);
    // A map too small for the indices is an unknown-label error with the line.
    let small = LabelMap::new(["a", "b"]).unwrap();
    let err = read_generic(&p, &fmt, &small, &STRICT).unwrap_err();
    assert!(
        matches!(err, DataError::UnknownLabel { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn generic_jsonl_string_labels_and_undetermined_language() {
    let p = fixture("generic/names.jsonl");
    let out = read_generic(
        &p,
        &GenericFormat::default(),
        &LabelMap::xglue_nc(),
        &STRICT,
    )
    .unwrap();
    assert_eq!(out.examples.len(), 3);
    assert!(out.examples.iter().all(|e| e.language == "und"));
    assert_eq!(out.examples[2].label, 0);
}

#[test]
fn generic_jsonl_errors() {
    let (_d, p) = temp_file(
        "d.jsonl",
        b"{\"text\":\"ok\",\"label\":\"a\"}\n{not json}\n{\"text\":null,\"label\":\"a\"}\n{\"text\":\"x\",\"label\":\"zzz\"}\n",
    );
    let m = LabelMap::new(["a", "b"]).unwrap();
    let err = read_generic(&p, &GenericFormat::default(), &m, &STRICT).unwrap_err();
    assert!(matches!(err, DataError::BadLine { line: 2, .. }), "{err}");
    let out = read_generic(&p, &GenericFormat::default(), &m, &SKIP).unwrap();
    assert_eq!(out.examples.len(), 1);
    let lines: Vec<Option<usize>> = out.warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, [Some(2), Some(3), Some(4)]);

    // A key absent from the first record is a missing column, never skipped.
    let (_d, p) = temp_file("d.jsonl", b"{\"sentence\":\"ok\",\"label\":\"a\"}\n");
    let err = read_generic(&p, &GenericFormat::default(), &m, &SKIP).unwrap_err();
    assert!(
        matches!(err, DataError::MissingColumn { ref column, .. } if column == "text"),
        "{err}"
    );

    let (_d, p) = temp_file("d.json", b"[{\"text\":\"ok\",\"label\":\"a\"}]");
    assert!(matches!(
        read_generic(&p, &GenericFormat::default(), &m, &STRICT),
        Err(DataError::InvalidArgument(_))
    ));
}

#[test]
fn generic_csv_ragged_row_and_missing_column() {
    let (_d, p) = temp_file(
        "d.csv",
        b"text,label\nfine,a\ntoo,many,fields\nalso fine,b\n",
    );
    let m = LabelMap::new(["a", "b"]).unwrap();
    let err = read_generic(&p, &GenericFormat::default(), &m, &STRICT).unwrap_err();
    assert!(matches!(err, DataError::BadLine { line: 3, .. }), "{err}");
    let out = read_generic(&p, &GenericFormat::default(), &m, &SKIP).unwrap();
    assert_eq!(out.examples.len(), 2);
    assert_eq!(out.warnings.len(), 1);

    let (_d, p) = temp_file("d.tsv", b"sentence\tlabel\nx\ta\n");
    let err = read_generic(&p, &GenericFormat::default(), &m, &STRICT).unwrap_err();
    assert!(
        matches!(err, DataError::MissingColumn { ref column, .. } if column == "text"),
        "{err}"
    );
}

#[test]
fn label_map_rules() {
    assert!(LabelMap::new(Vec::<String>::new()).is_err());
    assert!(LabelMap::new(["a", "a"]).is_err());
    assert!(LabelMap::new(["a", " "]).is_err());
    let m = LabelMap::from_data(["b", "a", "b", "c"]).unwrap();
    assert_eq!(m.names(), ["a", "b", "c"]);
    assert_eq!(m.index("c"), Some(2));
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(json, "[\"a\",\"b\",\"c\"]");
    let back: LabelMap = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert!(serde_json::from_str::<LabelMap>("[\"x\",\"x\"]").is_err());
    assert_eq!(
        LabelMap::xnli().names(),
        ["entailment", "neutral", "contradiction"]
    );
    assert_eq!(LabelMap::xglue_nc().len(), 10);
    assert_eq!(LabelMap::masakhanews().len(), 7);
}

#[test]
fn select_languages_errors_on_missing_language() {
    let ex = read_xnli(fixture("xnli/xnli.dev.tsv"), None, &STRICT)
        .unwrap()
        .examples;
    assert_eq!(select_languages(&ex, &["de", "fr"]).unwrap().len(), 3);
    assert!(matches!(
        select_languages(&ex, &["de", "ur"]),
        Err(DataError::EmptyLanguage { .. })
    ));
}

#[test]
fn an_unclosed_quote_that_merges_rows_is_an_error_with_line_and_fix() {
    // An XNLI-MT-style TSV: a bare `"` opens a quoted field on line 3 that the csv parser
    // would run on to the next quote, swallowing lines 4-10 into one field.
    let mut text = String::from("language\tpremise\tlabel\n");
    text.push_str("en\tA plain line.\tentailment\n");
    text.push_str("en\t\"Quoted at the start, never closed.\tneutral\n");
    for i in 0..7 {
        text.push_str(&format!("en\tLine {i} after it.\tcontradiction\n"));
    }
    text.push_str("en\tThe \"end\" quote.\tneutral\n");
    let (_d, p) = temp_file("xnli-mt.tsv", text.as_bytes());
    let fmt = GenericFormat {
        text: "premise".into(),
        language_column: Some("language".into()),
        ..GenericFormat::default()
    };
    let labels = LabelMap::new(["entailment", "neutral", "contradiction"]).unwrap();
    let e = read_generic(&p, &fmt, &labels, &STRICT)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":3") || e.contains("line 3"), "{e}");
    assert!(
        e.contains("quoting = false") && e.contains("--no-quoting"),
        "{e}"
    );
    // Skipping reports it as a warning, with the same advice, and keeps the rest.
    let out = read_generic(&p, &fmt, &labels, &SKIP).unwrap();
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].message.contains("quoting = false"));
    // With quoting off, every one of the ten rows is read, quotes kept as text.
    let off = GenericFormat {
        quoting: false,
        ..fmt
    };
    let out = read_generic(&p, &off, &labels, &STRICT).unwrap();
    assert_eq!(out.examples.len(), 10);
    assert!(out.examples[1].text.starts_with('"'));
}

#[test]
fn labels_scanned_from_a_file_whose_rows_were_all_swallowed_name_the_cause() {
    // The quote opens on the first data line and is never closed: no row survives, so the
    // label scan must say why (the quote and its fix), not merely "no labels".
    let mut text = String::from("language\tpremise\tlabel\n");
    text.push_str("en\t\"Quoted at the start, never closed.\tneutral\n");
    for i in 0..5 {
        text.push_str(&format!("en\tLine {i} after it.\tcontradiction\n"));
    }
    let (_d, p) = temp_file("swallowed.tsv", text.as_bytes());
    let fmt = GenericFormat {
        text: "premise".into(),
        language_column: Some("language".into()),
        ..GenericFormat::default()
    };
    let e = scan_labels(&[&p], &fmt).unwrap_err().to_string();
    assert!(e.contains(":2"), "{e}");
    assert!(e.contains("quoting = false"), "{e}");
    // Quoting off reads every row and finds both labels.
    let off = GenericFormat {
        quoting: false,
        ..fmt
    };
    let labels = scan_labels(&[&p], &off).unwrap();
    assert_eq!(labels.len(), 2);
}

#[test]
fn a_quoted_csv_field_with_a_line_break_is_still_one_text() {
    // A legitimate multi-line quoted CSV field (as `datasets.to_csv` writes) holds no delimiter.
    let text = "text,label\n\"first line\nsecond line\",a\nplain,b\n";
    let (_d, p) = temp_file("ok.csv", text.as_bytes());
    let labels = LabelMap::new(["a", "b"]).unwrap();
    let out = read_generic(&p, &GenericFormat::default(), &labels, &STRICT).unwrap();
    assert_eq!(out.examples.len(), 2);
    assert_eq!(out.examples[0].text, "first line\nsecond line");
}
