//! `wordfreq`: word frequencies over files and directories, as a map-reduce. The planner reads
//! the files and ships their text in chunks of at most 256 KiB (smaller for small inputs, so
//! that they too spread over the workers); workers count words; the synthesizer merges the
//! counts and keeps the top N. The planner reads only under the orchestrator's file roots
//! (`--file-root`, [`FileRoots`]): a path outside them rejects the task.

use std::{collections::HashMap, io::Read, path::Path};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use super::{HandlerContext, Kind, KindError, Plan};
use crate::files::{FileRoots, Opened};

/// Largest chunk of text in one subtask, in bytes.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Smallest chunk the planner aims for when the input is small.
pub const MIN_CHUNK_BYTES: usize = 16 * 1024;
/// Chunks the planner aims for, so that even a small input spreads over several workers.
const TARGET_CHUNKS: usize = 64;
/// Most text one task may read, in bytes.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// `top` when the input gives none.
pub const DEFAULT_TOP: usize = 10;
/// Largest `top` accepted.
pub const MAX_TOP: usize = 100_000;
/// Bytes looked at to tell a binary file (one with a NUL byte) from text.
const BINARY_SNIFF_BYTES: usize = 8000;

/// The `wordfreq` kind, reading under its file roots. The default has none, and refuses every
/// path.
#[derive(Clone, Debug, Default)]
pub struct WordFreq {
    roots: FileRoots,
}

impl WordFreq {
    /// The kind, reading only files under `roots`.
    pub fn new(roots: FileRoots) -> Self {
        Self { roots }
    }
}

fn default_top() -> usize {
    DEFAULT_TOP
}

/// Input of a `wordfreq` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordFreqInput {
    /// Files and directories (read recursively, hidden entries and symlinks inside directories
    /// skipped), on the orchestrator's machine, under its file roots.
    pub paths: Vec<String>,
    /// How many of the most frequent words to report (default 10).
    #[serde(default = "default_top")]
    pub top: usize,
}

/// A chunk of text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The text, cut at whitespace.
    pub text: String,
}

/// Word counts of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Word → occurrences.
    pub counts: HashMap<String, u64>,
}

/// One entry of the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCount {
    /// The word, lower-cased.
    pub word: String,
    /// Occurrences.
    pub count: u64,
}

/// Output of a `wordfreq` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordFreqOutput {
    /// Most frequent words, by count descending, then alphabetically.
    pub top: Vec<WordCount>,
    /// Words counted in all.
    pub total_words: u64,
    /// Different words.
    pub distinct_words: u64,
}

/// Words of a text: runs of letters, digits and `_` holding at least one letter, lower-cased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().any(char::is_alphabetic))
        .map(str::to_lowercase)
}

/// The texts read so far, and their size in bytes.
#[derive(Default)]
struct Texts {
    texts: Vec<String>,
    total: u64,
}

impl Texts {
    /// Reads `path` of a task: a file, or a directory's files recursively, each opened through
    /// the handle of the directory that lists it (so under the root `roots` opened it in).
    fn read_path(&mut self, roots: &FileRoots, path: &str) -> Result<(), KindError> {
        match roots
            .open(Path::new(path))
            .map_err(|e| KindError::fatal(e.to_string()))?
        {
            Opened::File(file) => self.read_file(file, path),
            Opened::Dir(dir) => self.read_dir(&dir, path),
            Opened::Other => Ok(()),
        }
    }

    fn read_dir(&mut self, dir: &Dir, shown: &str) -> Result<(), KindError> {
        let failed = |e: std::io::Error| KindError::fatal(format!("{shown}: {e}"));
        let mut children = Vec::new();
        for entry in dir.entries().map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(failed)?;
            if kind.is_symlink() {
                continue;
            }
            children.push((name, kind));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in children {
            let shown = format!("{shown}/{}", name.to_string_lossy());
            let failed = |e: std::io::Error| KindError::fatal(format!("{shown}: {e}"));
            if kind.is_dir() {
                self.read_dir(&dir.open_dir(&name).map_err(failed)?, &shown)?;
            } else if kind.is_file() {
                self.read_file(dir.open(&name).map_err(failed)?, &shown)?;
            }
        }
        Ok(())
    }

    fn read_file(&mut self, file: cap_std::fs::File, shown: &str) -> Result<(), KindError> {
        let failed = |e: std::io::Error| KindError::fatal(format!("{shown}: {e}"));
        // Checked before reading, so a huge file is refused instead of loaded.
        let size = file.metadata().map_err(failed)?.len();
        if self.total.saturating_add(size) > MAX_TOTAL_BYTES {
            return Err(too_much_text());
        }
        let mut bytes = Vec::new();
        // A file that grows while read is still read no further than the limit.
        file.take(MAX_TOTAL_BYTES - self.total + 1)
            .read_to_end(&mut bytes)
            .map_err(failed)?;
        if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
            return Ok(());
        }
        self.total = self.total.saturating_add(bytes.len() as u64);
        if self.total > MAX_TOTAL_BYTES {
            return Err(too_much_text());
        }
        self.texts
            .push(String::from_utf8_lossy(&bytes).into_owned());
        Ok(())
    }
}

/// The error of paths that hold more than [`MAX_TOTAL_BYTES`].
fn too_much_text() -> KindError {
    KindError::fatal(format!(
        "the paths hold more than {MAX_TOTAL_BYTES} bytes of text"
    ))
}

/// Cuts `text` into pieces of at most `limit` bytes, at whitespace where there is any.
fn split_at_whitespace(text: &str, limit: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > limit {
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let at_space = rest[..cut].rfind(char::is_whitespace).filter(|&i| i > 0);
        let cut = at_space.unwrap_or(cut).max(1);
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

impl Kind for WordFreq {
    type Input = WordFreqInput;
    type Subtask = Chunk;
    type Output = Counts;
    type Final = WordFreqOutput;

    fn name(&self) -> &str {
        "wordfreq"
    }

    fn plan(&self, input: &WordFreqInput) -> Result<Plan<Chunk>, KindError> {
        if input.paths.is_empty() {
            return Err(KindError::fatal(
                "paths must name at least one file or directory",
            ));
        }
        if input.top == 0 || input.top > MAX_TOP {
            return Err(KindError::fatal(format!(
                "top must be between 1 and {MAX_TOP}"
            )));
        }
        let mut read = Texts::default();
        for path in &input.paths {
            read.read_path(&self.roots, path)?;
        }
        let Texts { texts, total } = read;
        let target = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .div_ceil(TARGET_CHUNKS)
            .clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES);
        let mut chunks = Vec::new();
        let mut current = String::new();
        for text in &texts {
            for piece in split_at_whitespace(text, target - 1) {
                if !current.is_empty() && current.len() + 1 + piece.len() > target {
                    chunks.push(Chunk {
                        text: std::mem::take(&mut current),
                    });
                }
                if !current.is_empty() {
                    current.push('\n');
                }
                current.push_str(piece);
            }
        }
        if !current.is_empty() {
            chunks.push(Chunk { text: current });
        }
        Ok(chunks.into())
    }

    async fn handle(&self, chunk: Chunk, _context: HandlerContext) -> Result<Counts, KindError> {
        let mut counts = HashMap::new();
        for word in words(&chunk.text) {
            *counts.entry(word).or_insert(0) += 1;
        }
        Ok(Counts { counts })
    }

    fn synthesize(
        &self,
        input: &WordFreqInput,
        outputs: Vec<(String, Counts)>,
    ) -> Result<WordFreqOutput, KindError> {
        let mut merged: HashMap<String, u64> = HashMap::new();
        for (_, part) in outputs {
            for (word, count) in part.counts {
                let entry = merged.entry(word).or_insert(0);
                *entry = entry.saturating_add(count);
            }
        }
        let total_words = merged
            .values()
            .fold(0_u64, |sum, &count| sum.saturating_add(count));
        let distinct_words = merged.len() as u64;
        let mut ranked: Vec<WordCount> = merged
            .into_iter()
            .map(|(word, count)| WordCount { word, count })
            .collect();
        ranked.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
        ranked.truncate(input.top);
        Ok(WordFreqOutput {
            top: ranked,
            total_words,
            distinct_words,
        })
    }
}

#[cfg(test)]
mod tests;
