//! Unit tests of `wordfreq`: words, chunking, planning over files, merging.

use super::*;
use crate::files::FileRoots;

#[test]
fn words_are_lowercased_runs_with_a_letter() {
    let found: Vec<String> = words("Hello, hello_world! 42 x2 ÉTÉ").collect();
    assert_eq!(found, ["hello", "hello_world", "x2", "été"]);
}

#[test]
fn splitting_respects_the_limit_and_keeps_every_byte() {
    let text = "alpha beta gamma delta ".repeat(1000);
    let pieces = split_at_whitespace(&text, 100);
    assert!(pieces.iter().all(|p| p.len() <= 100));
    assert_eq!(pieces.concat(), text);
    let unbroken = "é".repeat(300);
    let pieces = split_at_whitespace(&unbroken, 101);
    assert!(pieces.iter().all(|p| p.len() <= 101));
    assert_eq!(pieces.concat(), unbroken);
}

#[test]
fn plan_reads_directories_into_bounded_chunks_and_counts_match() {
    let dir = std::env::temp_dir().join(format!("chorus-wordfreq-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("a.txt"), "the cat the dog\n").expect("write");
    std::fs::write(dir.join("sub/b.txt"), "the end ".repeat(70_000)).expect("write");
    std::fs::write(dir.join(".hidden"), "secret secret").expect("write");
    let input = WordFreqInput {
        paths: vec![dir.to_string_lossy().into_owned()],
        top: 2,
    };
    let kind = WordFreq::new(FileRoots::new(&[&dir]).expect("root"));
    let chunks = kind.plan(&input).expect("plan").into_subtasks();
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.text.len() <= MAX_CHUNK_BYTES));
    let outputs: Vec<(String, Counts)> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut counts = HashMap::new();
            for word in words(&chunk.text) {
                *counts.entry(word).or_insert(0) += 1;
            }
            (i.to_string(), Counts { counts })
        })
        .collect();
    let output = kind.synthesize(&input, outputs).expect("synthesize");
    assert_eq!(
        output.top,
        vec![
            WordCount {
                word: "the".into(),
                count: 70_002
            },
            WordCount {
                word: "end".into(),
                count: 70_000
            }
        ]
    );
    assert_eq!(output.total_words, 140_004);
    assert_eq!(output.distinct_words, 4);
}

#[test]
fn missing_paths_are_refused_with_the_path_named() {
    let input = WordFreqInput {
        paths: vec!["/nonexistent/chorus".into()],
        top: 3,
    };
    let kind = WordFreq::new(FileRoots::new(&["/"]).expect("root"));
    let error = kind.plan(&input).expect_err("missing path");
    assert!(error.message().contains("/nonexistent/chorus"), "{error}");
}

#[test]
fn without_roots_no_path_is_read() {
    let input = WordFreqInput {
        paths: vec![std::env::temp_dir().to_string_lossy().into_owned()],
        top: 3,
    };
    let error = WordFreq::default().plan(&input).expect_err("no roots");
    assert!(error.message().contains("no file roots"), "{error}");
}
