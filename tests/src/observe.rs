//! Asking a service's health and metrics listener (`--http-listen`) as a scraper or a probe
//! would: free ports for it, `GET`s, and the Prometheus text parsed into series.

use std::{collections::HashMap, time::Duration};

use crate::WAIT;

/// A loopback port free now (the system's pick), as `127.0.0.1:<port>` for `--http-listen`.
pub fn free_address() -> String {
    format!("127.0.0.1:{}", crate::servers::free_port())
}

/// `GET http://<address><path>`: its status and body, `None` when nothing answers.
pub async fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Waits (up to [`WAIT`]) until `GET path` answers `status`; returns the body.
pub async fn wait_for(address: &str, path: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = get(address, path).await;
        if let Some((got, body)) = &answer {
            if *got == status {
                return body.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{address}{path} never answered {status} (last: {answer:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One scrape of `/metrics`: each series (name and labels sorted) with its value.
#[derive(Debug)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Scrapes `address` (which must answer).
    pub async fn of(address: &str) -> Self {
        let (status, body) = get(address, "/metrics").await.expect("no /metrics answer");
        assert_eq!(status, 200, "{body}");
        Self::parse(&body)
    }

    /// Parses Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Self {
        let mut series = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let key = match key.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    series_key(name, &labels)
                }
                None => key.to_owned(),
            };
            series.insert(key, value.parse().unwrap());
        }
        Self(series)
    }

    /// The value of series `name{labels}` (`labels` as `("kind", "range-sum")`), 0 if absent
    /// (Prometheus counters start at 0).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.sort_unstable();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.0
            .get(&series_key(name, &labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every series whose name starts with `prefix`, for failure messages.
    pub fn named(&self, prefix: &str) -> Vec<(&String, &f64)> {
        let mut found: Vec<_> = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        found
    }
}

fn series_key(name: &str, labels: &[&str]) -> String {
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}
