//! Golden tables, file round-trips and plot checks for the report writers.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use fedprompt_report::{
    accuracy_records, accuracy_table, comm_table, load, render_summary, tables_markdown, write_all,
    write_plots, AccuracyRecord, CommRow, Curve, CurveRecord, DataEffPoint, LangMetrics,
    ParadigmRow, PlotKind, ReportError, RoundPoint, RunResults, PLOT_SIZE,
};

fn metrics(accuracy: f64, macro_f1: f64) -> LangMetrics {
    LangMetrics {
        accuracy,
        macro_f1,
        n: 1000,
    }
}

fn row(paradigm: &str, method: &str, setting: &str, langs: &[(&str, f64)]) -> ParadigmRow {
    let per = langs
        .iter()
        .map(|(l, a)| (l.to_string(), metrics(*a, a - 0.05)))
        .collect();
    ParadigmRow::new(paradigm, method, setting, per)
}

/// Two languages, four paradigms (one with a missing language, one tie), two comm rows.
fn golden() -> RunResults {
    RunResults {
        experiment: "golden".into(),
        task: "nc".into(),
        model: "tiny-xlmr".into(),
        seed: 7,
        seeds: Vec::new(),
        languages: vec!["en".into(), "es".into()],
        rows: vec![
            row(
                "PE_Monolingual",
                "prompt",
                "local",
                &[("en", 0.829), ("es", 0.597)],
            ),
            row(
                "PE_FL (IID)",
                "prompt",
                "IID",
                &[("en", 0.912), ("es", 0.822)],
            ),
            row(
                "PE_FL (non-IID)",
                "prompt",
                "non-IID",
                &[("en", 0.878), ("es", 0.822)],
            ),
            row("LoRA_FL (non-IID)", "lora-r8", "non-IID", &[("en", 0.893)]),
        ],
        curves: Vec::new(),
        comm: vec![
            CommRow::full_participation("PE_FL (IID)", "prompt", 1_202_708, 278_655_764, 4, 5, 10),
            CommRow::full_participation(
                "LoRA_FL (non-IID)",
                "lora-r8",
                1_491_476,
                278_655_764,
                4,
                5,
                10,
            ),
        ],
        data_efficiency: Vec::new(),
        distances: None,
        meta: BTreeMap::from([("config".into(), "nc.toml".into())]),
    }
}

/// The golden results plus curves, a data-efficiency sweep and distances: every plot has data.
fn full() -> RunResults {
    let mut r = golden();
    r.curves = ["PE_FL (IID)", "PE_FL (non-IID)"]
        .iter()
        .enumerate()
        .map(|(k, p)| Curve {
            paradigm: p.to_string(),
            points: (1..=6)
                .map(|round| RoundPoint {
                    round,
                    accuracy: 0.3 + 0.1 * f64::from(round) - 0.05 * k as f64,
                    loss: (round % 2 == 0).then_some(1.0 / f64::from(round)),
                    epsilon: None,
                })
                .collect(),
            sd: Vec::new(),
        })
        .collect();
    for (size, mono, fl) in [(30, 0.2, 0.7), (300, 0.45, 0.78), (3000, 0.6, 0.82)] {
        for (p, a) in [("PE_Monolingual", mono), ("PE_FL (IID)", fl)] {
            r.data_efficiency.push(DataEffPoint {
                paradigm: p.into(),
                train_size: size,
                accuracy: a,
                sd: None,
            });
        }
    }
    r.distances = Some(BTreeMap::from([("en".into(), 0.4), ("es".into(), 1.2)]));
    r
}

const GOLDEN_ACCURACY: &str = "\
| Paradigm | Method | en | es | Avg |
|---|---|---:|---:|---:|
| PE_Monolingual | prompt | 82.9 | 59.7 | 71.3 |
| PE_FL (IID) | prompt | **91.2** | **82.2** | 86.7 |
| PE_FL (non-IID) | prompt | 87.8 | **82.2** | 85.0 |
| LoRA_FL (non-IID) | lora-r8 | 89.3 | – | **89.3** |
";

const GOLDEN_COMM: &str = "\
| Paradigm | Method | # Trainable params | % of total | Up MB / client / round | Down MB / client / round | Clients × rounds | Total MB |
|---|---|---:|---:|---:|---:|---:|---:|
| PE_FL (IID) | prompt | 1,202,708 | 0.432% | 4.81 | 4.81 | 5 × 10 | 481.08 |
| LoRA_FL (non-IID) | lora-r8 | 1,491,476 | 0.535% | 5.97 | 5.97 | 5 × 10 | 596.59 |
";

#[test]
fn accuracy_table_matches_golden() {
    assert_eq!(accuracy_table(&golden()), GOLDEN_ACCURACY);
}

#[test]
fn comm_table_matches_golden() {
    assert_eq!(comm_table(&golden().comm), GOLDEN_COMM);
}

#[test]
fn tables_markdown_matches_golden() {
    let expected = format!(
        "# golden\n\nTask: nc · Model: tiny-xlmr · Seed: 7\n\n- config: nc.toml\n\n\
         ## Accuracy (%)\n\nBold: best in column.\n\n{GOLDEN_ACCURACY}\n\
         ## Parameters and communication\n\n\
         MB = 10⁶ bytes; total counts up and down for all clients and rounds.\n\n{GOLDEN_COMM}"
    );
    assert_eq!(tables_markdown(&golden()), expected);
}

#[test]
fn paper_table4_full_fine_tuning_row() {
    let full = CommRow::full_participation("FL-Full", "full", 278_655_764, 278_655_764, 4, 5, 10);
    assert_eq!(full.total_bytes, 111_462_305_600);
    assert!(comm_table(&[full]).ends_with(
        "| FL-Full | full | 278,655,764 | 100.0% | 1,114.62 | 1,114.62 | 5 × 10 | 111,462.31 |\n"
    ));
}

#[test]
fn summary_matches_golden() {
    let expected = "\
golden — nc on tiny-xlmr, seed 7

| Paradigm | en | es | Avg |
|---|---:|---:|---:|
| PE_Monolingual | 82.9 | 59.7 | 71.3 |
| PE_FL (IID) | 91.2 | 82.2 | 86.7 |
| PE_FL (non-IID) | 87.8 | 82.2 | 85.0 |
| LoRA_FL (non-IID) | 89.3 | – | 89.3 |

| Paradigm | Trainable | % of total | Total MB |
|---|---:|---:|---:|
| PE_FL (IID) | 1,202,708 | 0.432% | 481.08 |
| LoRA_FL (non-IID) | 1,491,476 | 0.535% | 596.59 |
";
    assert_eq!(render_summary(&golden()), expected);
}

#[test]
fn summary_with_many_languages_shows_min_and_max() {
    let langs = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar"];
    let accs = [0.43, 0.41, 0.43, 0.40, 0.40, 0.41, 0.41, 0.38, 0.39];
    let mut r = golden();
    r.languages = langs.iter().map(|l| l.to_string()).collect();
    r.rows = vec![row(
        "PE_FL",
        "prompt",
        "non-IID",
        &langs.iter().copied().zip(accs).collect::<Vec<_>>(),
    )];
    r.comm.clear();
    let s = render_summary(&r);
    assert!(s.contains("| Paradigm | Min | Max | Avg |"), "{s}");
    // Ties go to the first language in column order: "en" before "es".
    assert!(
        s.contains("| PE_FL | 38.0 (tr) | 43.0 (en) | 40.7 |"),
        "{s}"
    );
}

#[test]
fn single_row_has_no_bold() {
    let mut r = golden();
    r.rows.truncate(1);
    assert!(!accuracy_table(&r).contains("**"));
}

#[test]
fn json_round_trip_through_folder_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = full();
    write_all(&r, dir.path()).unwrap();
    assert_eq!(load(dir.path()).unwrap(), r);
    assert_eq!(load(dir.path().join("results.json")).unwrap(), r);
}

#[test]
fn csv_files_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let r = full();
    write_all(&r, dir.path()).unwrap();

    let acc: Vec<AccuracyRecord> = csv::Reader::from_path(dir.path().join("accuracy.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(acc, accuracy_records(&r));
    assert_eq!(acc.len(), 7, "3 rows × 2 languages + 1 row × 1 language");
    assert_eq!(
        (
            acc[0].paradigm.as_str(),
            acc[0].language.as_str(),
            acc[0].accuracy,
            acc[0].n
        ),
        ("PE_Monolingual", "en", 0.829, 1000)
    );
    let header = fs::read_to_string(dir.path().join("accuracy.csv")).unwrap();
    assert!(header.starts_with("paradigm,method,setting,language,accuracy,macro_f1,n\n"));

    let comm: Vec<CommRow> = csv::Reader::from_path(dir.path().join("comm.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(comm, r.comm);

    let curves: Vec<CurveRecord> = csv::Reader::from_path(dir.path().join("curves.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(curves.len(), 12);
    assert_eq!(curves[0].loss, None);
    assert_eq!(curves[1].loss, Some(0.5));
    assert_eq!(curves[6].paradigm, "PE_FL (non-IID)");

    let eff: Vec<DataEffPoint> = csv::Reader::from_path(dir.path().join("data_efficiency.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(eff, r.data_efficiency);
}

fn png_dimensions(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Decodes an RGB PNG and counts dark pixels in the title band (top 50 rows, middle third).
fn dark_title_pixels(path: &Path) -> usize {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), PLOT_SIZE);
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let w = info.width as usize;
    let mut dark = 0;
    for y in 0..50 {
        for x in w / 3..2 * w / 3 {
            let p = &buf[(y * w + x) * 3..][..3];
            if p.iter().all(|&c| c < 80) {
                dark += 1;
            }
        }
    }
    dark
}

#[test]
fn every_plot_is_written_with_titles_and_legends() {
    let dir = tempfile::tempdir().unwrap();
    let r = full();
    let written = write_plots(&r, dir.path()).unwrap();
    assert_eq!(written.len(), 8);
    let expect: [(PlotKind, &[&str]); 4] = [
        (
            PlotKind::Curves,
            &[
                "Accuracy per round",
                "Round / epoch",
                "Accuracy (%)",
                "PE_FL (IID)",
                "PE_FL (non-IID)",
            ],
        ),
        (
            PlotKind::PerLanguage,
            &[
                "Accuracy per language",
                "Language",
                "Accuracy (%)",
                "PE_Monolingual",
                "LoRA_FL (non-IID)",
                "Avg",
            ],
        ),
        (
            PlotKind::DataEfficiency,
            &[
                "Training examples per language (log scale)",
                "Accuracy (%)",
                "PE_Monolingual",
                "3,000",
            ],
        ),
        (
            PlotKind::Distance,
            &[
                "Language distance φ to the pre-training language",
                "Accuracy (%)",
                "PE_FL (non-IID)",
            ],
        ),
    ];
    for (kind, needles) in expect {
        let svg_path = dir.path().join(format!("{}.svg", kind.stem()));
        let png_path = dir.path().join(format!("{}.png", kind.stem()));
        assert!(written.contains(&svg_path) && written.contains(&png_path));
        let svg = fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg"), "{kind:?}");
        for needle in needles {
            assert!(svg.contains(needle), "{kind:?} SVG lacks {needle:?}");
        }
        let png = fs::read(&png_path).unwrap();
        assert!(
            png.len() > 10_000,
            "{kind:?} PNG is only {} bytes",
            png.len()
        );
        assert_eq!(png_dimensions(&png), PLOT_SIZE);
        // The black title text is rasterised with the embedded font.
        assert!(
            dark_title_pixels(&png_path) > 300,
            "{kind:?}: no title text in PNG"
        );
    }
    // Four distance series or fewer: each point carries its language code.
    let svg = fs::read_to_string(dir.path().join("distance.svg")).unwrap();
    let es_labels = svg.lines().filter(|l| l.trim() == "es").count();
    assert_eq!(
        es_labels,
        1 + 3,
        "one code on the guide, one per series with an es point"
    );
}

#[test]
fn empty_data_writes_no_plots_and_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = golden();
    r.rows.clear();
    r.comm.clear();
    let written = write_all(&r, dir.path()).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["results.json", "tables.md"]);
    let mut on_disk: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        ["results.json", "tables.md"],
        "no leftover temp files"
    );
    assert!(fs::read_to_string(dir.path().join("tables.md"))
        .unwrap()
        .ends_with("_No results._\n"));

    // Rows but no curves, sweep or distances: only the bar chart.
    let written = write_plots(&golden(), dir.path()).unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(names, ["per_language.svg", "per_language.png"]);
}

#[test]
fn write_all_lists_every_file_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_all(&full(), dir.path().join("nested/results")).unwrap();
    assert_eq!(written.len(), 6 + 8);
    for p in &written {
        assert!(
            fs::metadata(p).unwrap().len() > 0,
            "{} is empty",
            p.display()
        );
    }
    let stray = fs::read_dir(dir.path().join("nested/results"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(stray, 0);
}

#[test]
fn percent_accuracies_are_rejected_with_a_clear_error() {
    let mut r = golden();
    r.rows[1].per_language.get_mut("es").unwrap().accuracy = 82.2;
    let dir = tempfile::tempdir().unwrap();
    let err = write_all(&r, dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::Invalid(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("\"PE_FL (IID)\"") && msg.contains("\"es\"") && msg.contains("not percent"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn unknown_language_is_rejected() {
    let mut r = golden();
    r.rows[0]
        .per_language
        .insert("it".into(), metrics(0.5, 0.5));
    assert!(r.validate().unwrap_err().to_string().contains("\"it\""));
}

#[test]
fn load_reports_missing_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::NotFound { .. }));
    assert!(err.to_string().contains("expected a results.json file"));

    let bad = dir.path().join("results.json");
    fs::write(&bad, "{\"experiment\": \"x\", \"task\": 3}").unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::Json { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("results.json") && msg.contains("line 1"),
        "{msg}"
    );
}

#[test]
fn minimal_json_loads_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    fs::write(
        &path,
        r#"{"experiment":"e","task":"t","model":"m","seed":1,"languages":["en"]}"#,
    )
    .unwrap();
    let r = load(&path).unwrap();
    assert!(r.rows.is_empty() && r.distances.is_none() && r.meta.is_empty());
}

#[test]
fn seeds_combine_to_exact_means_and_sample_sds_and_render_with_spread() {
    use fedprompt_report::combine_seeds;
    // Three seeds of the full results, with accuracies shifted by -0.03, 0, +0.06.
    let shifts = [-0.03, 0.0, 0.06];
    let runs: Vec<RunResults> = shifts
        .iter()
        .map(|d| {
            let mut r = full();
            for row in &mut r.rows {
                for m in row.per_language.values_mut() {
                    m.accuracy += d;
                }
                row.average += d;
            }
            for c in &mut r.curves {
                c.points.truncate(if *d > 0.0 { 4 } else { 6 });
                for p in &mut c.points {
                    p.accuracy += d;
                }
            }
            for p in &mut r.data_efficiency {
                p.accuracy += d;
            }
            // Early stopping: the seeds ran 10, 11 and 13 rounds.
            for c in &mut r.comm {
                c.rounds = if *d < 0.0 {
                    10
                } else if *d == 0.0 {
                    11
                } else {
                    13
                };
                c.total_bytes = u64::from(c.rounds) * 1000;
            }
            r
        })
        .collect();
    let base = full();
    let r = combine_seeds(runs, &[1, 2, 3]).unwrap();
    assert_eq!(r.seeds, vec![1, 2, 3]);
    // Mean shift 0.01; sample sd of {-0.03, 0, 0.06} = sqrt((0.0016 + 0.0001 + 0.0025) / 2).
    let sd = ((0.0016f64 + 0.0001 + 0.0025) / 2.0).sqrt();
    for (row, b) in r.rows.iter().zip(&base.rows) {
        assert!((row.average - (b.average + 0.01)).abs() < 1e-12);
        let spread = row.spread.as_ref().unwrap();
        assert_eq!(spread.seeds, 3);
        assert!((spread.average_sd - sd).abs() < 1e-12);
        for (lang, m) in &row.per_language {
            assert!((m.accuracy - (b.per_language[lang].accuracy + 0.01)).abs() < 1e-12);
            assert!((spread.per_language_sd[lang] - sd).abs() < 1e-12);
        }
        let seeds: Vec<u64> = row.per_seed.iter().map(|s| s.seed).collect();
        assert_eq!(seeds, vec![1, 2, 3]);
        assert!((row.per_seed[2].average - (b.average + 0.06)).abs() < 1e-12);
    }
    // Curves: rounds 5 and 6 only have the two seeds that reached them.
    let c = &r.curves[0];
    assert_eq!(c.points.len(), 6);
    let b = &base.curves[0].points;
    assert!((c.points[0].accuracy - (b[0].accuracy + 0.01)).abs() < 1e-12);
    assert!((c.points[5].accuracy - (b[5].accuracy - 0.015)).abs() < 1e-12);
    assert!((c.sd[5] - 0.03 / 2f64.sqrt()).abs() < 1e-12);
    let d = &r.data_efficiency[0];
    assert!((d.sd.unwrap() - sd).abs() < 1e-12);
    // Communication: mean rounds (34 / 3 = 11.33 → 11) and mean bytes over the seeds.
    assert!(!r.comm.is_empty());
    for c in &r.comm {
        assert_eq!(c.rounds, 11);
        assert_eq!(c.total_bytes, 11_333);
    }
    // Tables show mean ± sd and a per-seed table; plots and CSVs are written.
    let md = tables_markdown(&r);
    assert!(md.contains("Seeds: 1, 2, 3"), "{md}");
    assert!(md.contains("83.9 ± 4.6"), "{md}");
    assert!(md.contains("| seed 1 | seed 2 | seed 3 |"), "{md}");
    let dir = tempfile::tempdir().unwrap();
    let files = write_all(&r, dir.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("seeds.csv")));
    let svg = fs::read_to_string(dir.path().join("per_language.svg")).unwrap();
    assert!(svg.contains("<polyline") || svg.contains("<path") || svg.contains("<line"));
    // Mismatched inputs are refused.
    assert!(combine_seeds(vec![full()], &[1, 2]).is_err());
    let mut other = full();
    other.rows.pop();
    assert!(combine_seeds(vec![full(), other], &[1, 2]).is_err());
}

#[test]
fn encoded_uploads_are_named_beside_their_bytes() {
    let mut row = CommRow::full_participation("FL", "prompt", 1_000_000, 10_000_000, 4, 5, 10);
    row.bytes_up_per_client_round = 500_000;
    row.upload_encoding = Some("int8".into());
    assert!(comm_table(&[row.clone()]).contains("| 0.50 (int8) | 4.00 |"));
    // Old results without the field still load.
    let mut json = serde_json::to_value(&row).unwrap();
    json.as_object_mut().unwrap().remove("upload_encoding");
    let back: CommRow = serde_json::from_value(json).unwrap();
    assert_eq!(back.upload_encoding, None);
}

#[test]
fn a_long_task_name_is_cut_to_fit_the_plot_title() {
    let mut r = full();
    r.task = format!("a very long task name {} END-OF-TASK", "word ".repeat(60));
    let dir = tempfile::tempdir().unwrap();
    write_plots(&r, dir.path()).unwrap();
    let svg = fs::read_to_string(dir.path().join("curves.svg")).unwrap();
    assert!(svg.contains("a very long task name"), "the start is kept");
    assert!(svg.contains('…'), "the cut is marked");
    assert!(!svg.contains("END-OF-TASK"), "the tail is cut");
    // A short one is left alone.
    r.task = "short task".into();
    write_plots(&r, dir.path()).unwrap();
    let svg = fs::read_to_string(dir.path().join("curves.svg")).unwrap();
    assert!(svg.contains("Accuracy per round — short task") && !svg.contains('…'));
}
