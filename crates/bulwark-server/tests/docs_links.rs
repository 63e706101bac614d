//! The documentation's links between its own pages: every relative link in `README.md` and
//! `docs/*.md` names a file of the repository and, with `#anchor`, a heading of that file
//! (as the repository's web view names headings) or an `<a id="…">` in it. A heading
//! renamed without its links (a measurement section whose dates grew, say) fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchor a heading gets: lower case, punctuation dropped but `-` and `_`, spaces as
/// `-`; a repeated one gets `-1`, `-2`, ….
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for line in prose(text) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            let base = slug(&line[level..]);
            let n = seen.entry(base.clone()).or_insert(0);
            found.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
        let mut rest = line;
        while let Some(i) = rest.find("<a id=\"") {
            rest = &rest[i + 7..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_string());
            }
        }
    }
    found
}

/// The targets of the links on a line: `[text](target)`, `[text](target "title")` and a
/// reference definition `[label]: target`.
fn link_targets(line: &str) -> Vec<&str> {
    fn first_word(s: &str) -> &str {
        s.split_whitespace().next().unwrap_or("")
    }
    let mut out = Vec::new();
    if let Some(definition) = line.strip_prefix('[').and_then(|l| l.split_once("]: ")) {
        out.push(first_word(definition.1));
    }
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(first_word(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_link_between_the_pages_names_a_file_and_a_heading_that_exist() {
    let root = repo();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() > 5, "the docs were not found: {pages:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for line in prose(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target, None),
                };
                let dest = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(file)
                };
                checked += 1;
                let name = page.strip_prefix(&root).unwrap_or(page).display();
                if !dest.exists() {
                    broken.push(format!("{name}: {target} (no such file)"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let is_md = dest.extension().is_some_and(|e| e == "md");
                if is_md && !anchors(&std::fs::read_to_string(&dest).unwrap()).contains(anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links read: the parsing is off"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn headings_and_links_are_read_as_the_web_view_reads_them() {
    assert_eq!(slug(" The LemonLDAP::NG peer"), "the-lemonldapng-peer");
    assert_eq!(
        slug("Results (2026-12-01 to -03, the shared 2-vCPU VM)"),
        "results-2026-12-01-to--03-the-shared-2-vcpu-vm"
    );
    assert_eq!(slug("`run_to_the_end` and exit"), "run_to_the_end-and-exit");
    assert_eq!(
        link_targets("see [a](x.md#b \"title\") and [c](#d); [e](https://f)"),
        ["x.md#b", "#d", "https://f"]
    );
    assert_eq!(link_targets("[ref]: docs/y.md#z"), ["docs/y.md#z"]);
    let found = anchors("# A\n## A\n```\n# not a heading\n```\ntext <a id=\"x-y\"></a>\n");
    let expected: HashSet<String> = ["a", "a-1", "x-y"].map(String::from).into();
    assert_eq!(found, expected);
}
