//! `report`: the orchestrator-workers pattern as people use it for writing. A planner picks the
//! sections, `writer` workers draft them in parallel, an `editor` subtask that depends on every
//! section writes the summary, the review sends weak sections back once with feedback, and the
//! synthesis assembles the document. The text comes from deterministic templates, so it runs
//! offline and tests can check every word.

use serde::{Deserialize, Serialize};

use super::{HandlerContext, Kind, KindError, Plan, Planned, Review};

/// Sections when the input names none.
pub const DEFAULT_SECTIONS: [&str; 4] = ["Background", "Design", "Risks", "Next steps"];
/// Most sections a report may have.
pub const MAX_SECTIONS: usize = 100;
/// Fewest words a section needs to pass the review.
pub const MIN_SECTION_WORDS: usize = 30;
/// Worker type of the section writers.
pub const WRITER: &str = "writer";
/// Worker type of the editor.
pub const EDITOR: &str = "editor";

/// The `report` kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report;

/// Input of a `report` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportInput {
    /// What the report is about.
    pub topic: String,
    /// Section titles (default: [`DEFAULT_SECTIONS`]).
    #[serde(default)]
    pub sections: Vec<String>,
    /// Sections whose first draft comes out too short for the review (default: the second).
    #[serde(default)]
    pub weak: Option<Vec<String>>,
}

impl ReportInput {
    fn sections(&self) -> Vec<String> {
        if self.sections.is_empty() {
            DEFAULT_SECTIONS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.sections.clone()
        }
    }

    fn weak(&self) -> Vec<String> {
        match &self.weak {
            Some(weak) => weak.clone(),
            None => self.sections().into_iter().skip(1).take(1).collect(),
        }
    }
}

/// One piece of work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "lowercase")]
pub enum Part {
    /// Write one section.
    Section {
        /// Topic of the report.
        topic: String,
        /// Section title.
        title: String,
        /// Whether this draft comes out short.
        weak: bool,
        /// The reviewer's feedback, on a rewrite.
        feedback: Option<String>,
    },
    /// Write the summary from every section.
    Summary {
        /// Topic of the report.
        topic: String,
    },
}

/// What a writer or the editor returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// Section title, or `Summary`.
    pub title: String,
    /// The text.
    pub text: String,
    /// Its length in words.
    pub words: usize,
}

/// The assembled report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The document as Markdown.
    pub document: String,
    /// Number of sections.
    pub sections: usize,
    /// Words in the document, headings excluded.
    pub words: usize,
}

fn section_id(index: usize) -> String {
    format!("section-{index}")
}

const SUMMARY_ID: &str = "summary";

fn text(title: &str, text: String) -> Text {
    Text {
        title: title.to_owned(),
        words: text.split_whitespace().count(),
        text,
    }
}

fn write_section(topic: &str, title: &str, weak: bool, feedback: Option<&str>) -> String {
    let opening = format!("{title} of {topic}: this section sets out what matters about it.");
    if weak && feedback.is_none() {
        return opening;
    }
    let mut body = format!(
        "{opening} It explains the {title} of {topic} in plain terms, lists what was decided \
         and why, names the trade-offs that were weighed, and says what a reader should check \
         before relying on it in production."
    );
    if let Some(feedback) = feedback {
        body.push_str(&format!(" Revised after review: {feedback}"));
    }
    body
}

fn summary_plan(topic: &str, sections: usize) -> Planned<Part> {
    Planned::new(Part::Summary {
        topic: topic.to_owned(),
    })
    .id(SUMMARY_ID)
    .on(EDITOR)
    .after((0..sections).map(section_id))
}

impl Kind for Report {
    type Input = ReportInput;
    type Subtask = Part;
    type Output = Text;
    type Final = Document;
    // Planning and synthesis only compute, over at most MAX_SECTIONS sections.
    const INLINE: bool = true;

    fn name(&self) -> &str {
        "report"
    }

    fn plan(&self, input: &ReportInput) -> Result<Plan<Part>, KindError> {
        if input.topic.trim().is_empty() {
            return Err(KindError::fatal("topic must not be empty"));
        }
        let sections = input.sections();
        if sections.len() > MAX_SECTIONS {
            return Err(KindError::fatal(format!("at most {MAX_SECTIONS} sections")));
        }
        let weak = input.weak();
        let mut plan: Vec<Planned<Part>> = sections
            .iter()
            .enumerate()
            .map(|(index, title)| {
                Planned::new(Part::Section {
                    topic: input.topic.clone(),
                    title: title.clone(),
                    weak: weak.contains(title),
                    feedback: None,
                })
                .id(section_id(index))
                .on(WRITER)
            })
            .collect();
        plan.push(summary_plan(&input.topic, sections.len()));
        Ok(plan.into())
    }

    async fn handle(&self, part: Part, context: HandlerContext) -> Result<Text, KindError> {
        match part {
            Part::Section {
                topic,
                title,
                weak,
                feedback,
            } => Ok(text(
                &title,
                write_section(&topic, &title, weak, feedback.as_deref()),
            )),
            Part::Summary { topic } => {
                let sections: Vec<(String, Text)> = context.dependency_outputs()?;
                let titles: Vec<&str> = sections.iter().map(|(_, s)| s.title.as_str()).collect();
                let words: usize = sections.iter().map(|(_, s)| s.words).sum();
                Ok(text(
                    "Summary",
                    format!(
                        "This report on {topic} covers {} in {words} words.",
                        titles.join(", ")
                    ),
                ))
            }
        }
    }

    fn review(
        &self,
        input: &ReportInput,
        outputs: &[(String, Text)],
        round: u32,
    ) -> Result<Review<Part>, KindError> {
        let weak: Vec<&(String, Text)> = outputs
            .iter()
            .filter(|(id, text)| id != SUMMARY_ID && text.words < MIN_SECTION_WORDS)
            .collect();
        if weak.is_empty() {
            return Ok(Review::Accept);
        }
        let mut redo: Vec<Planned<Part>> = weak
            .iter()
            .map(|(id, text)| {
                Planned::new(Part::Section {
                    topic: input.topic.clone(),
                    title: text.title.clone(),
                    weak: false,
                    feedback: Some(format!(
                        "round {round} found {} words; expand to at least {MIN_SECTION_WORDS}.",
                        text.words
                    )),
                })
                .id(id.clone())
                .on(WRITER)
            })
            .collect();
        // The summary counts words, so it is redone after the sections it depends on.
        redo.push(summary_plan(&input.topic, input.sections().len()));
        Ok(Review::Revise(redo))
    }

    fn synthesize(
        &self,
        input: &ReportInput,
        outputs: Vec<(String, Text)>,
    ) -> Result<Document, KindError> {
        let mut document = format!("# {}\n", input.topic);
        let mut words = 0;
        let mut sections = 0;
        let summary = outputs.iter().find(|(id, _)| id == SUMMARY_ID);
        if let Some((_, summary)) = summary {
            document.push_str(&format!("\n{}\n", summary.text));
            words += summary.words;
        }
        for (id, section) in &outputs {
            if id == SUMMARY_ID {
                continue;
            }
            document.push_str(&format!("\n## {}\n\n{}\n", section.title, section.text));
            words += section.words;
            sections += 1;
        }
        Ok(Document {
            document,
            sections,
            words,
        })
    }
}

#[cfg(test)]
mod tests;
