//! The validation corpus (`tests/corpus/`, one case per file) run through the real
//! `egress-agent validate --output json`: every verdict, keyword and rule id must
//! come out as the case says, and every rule of SPEC §3 must have a case.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every rule id of SPEC §3.3, §3.5, §3.6 and §3.7.
const RULES: &[&str] = &[
    "SE-S1", "SE-H1", "SE-H2", "SE-H3", "SE-H4", "SE-A1", "SE-A2", "SE-A3", "SE-P1", "SE-P2",
    "SE-P3", "SE-P4", "SE-P5", "SE-P6", "SE-P7", "SE-R1", "SE-R2", "SE-R3", "SE-R4", "SE-R5",
    "SE-R6", "SE-R7", "SE-R8", "SE-R9a", "SE-R9b", "SE-R9c", "SE-R9d", "SE-R9e", "SE-M1", "SE-E1",
    "SE-E2", "SE-E3", "SE-E4", "SE-E5", "SE-E6", "SE-E7", "SE-E8", "SE-E9", "SE-W1", "SE-W2",
    "SE-W3", "SE-X1", "SE-X2", "SE-X3", "SE-X4", "DR-1", "DR-2", "DR-3", "DR-4", "DR-5", "DR-6",
    "DR-7", "DR-8", "DR-9", "DR-10", "DR-11", "DR-12", "DR-13", "DR-14", "DR-15", "VS-1", "VS-2",
    "VS-3", "VS-4", "VS-5", "VS-6", "VS-7", "VS-8", "VS-9", "VS-10", "VS-11", "VS-12", "VS-13",
    "SC-1", "SC-2", "SC-3", "SC-4", "SC-5", "SC-6", "SC-7", "SC-8",
];

struct Case {
    file: PathBuf,
    rule: String,
    expect: String,
    keyword: String,
}

fn cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let header = |key: &str| {
                text.lines()
                    .take_while(|l| l.starts_with('#'))
                    .find_map(|l| l.strip_prefix(&format!("# {key}:")))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_else(|| panic!("{}: no `# {key}:` header", file.display()))
            };
            Case {
                rule: header("rule"),
                expect: header("expect"),
                keyword: header("keyword"),
                file,
            }
        })
        .collect()
}

#[test]
fn every_rule_has_a_case() {
    let cases = cases();
    let missing: Vec<&&str> = RULES
        .iter()
        .filter(|r| !cases.iter().any(|c| c.rule == **r))
        .collect();
    assert!(missing.is_empty(), "rules without a case: {missing:?}");
    assert!(
        cases
            .iter()
            .filter(|c| c.expect == "valid" && c.rule == "none")
            .count()
            >= 10
    );
}

#[test]
fn corpus_verdicts_keywords_and_rules() {
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_egress-agent"))
            .args(["validate", "--output", "json"])
            .arg(&c.file)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {}",
                c.file.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let mut findings: Vec<&serde_json::Value> =
            report["documents"].as_array().unwrap().iter().collect();
        for r in report["resources"].as_array().unwrap() {
            findings.extend(r["findings"].as_array().unwrap());
        }
        let at = |level: &str| -> Vec<&serde_json::Value> {
            findings
                .iter()
                .copied()
                .filter(|f| f["level"] == level)
                .collect()
        };
        let (errors, warnings) = (at("error"), at("warning"));
        let got = if !errors.is_empty() {
            "invalid"
        } else if !warnings.is_empty() {
            "warning"
        } else {
            "valid"
        };
        let exit_ok = out.status.code() == Some(if got == "invalid" { 1 } else { 0 });
        let pool = if c.expect == "invalid" {
            &errors
        } else {
            &warnings
        };
        let keyword_ok = c.keyword.is_empty()
            || pool
                .iter()
                .any(|f| f["message"].as_str().unwrap().contains(&c.keyword));
        let rule_ok = c.expect == "valid"
            || c.rule == "none"
            || pool.iter().any(|f| f["rule"] == c.rule.as_str());
        if got != c.expect || !exit_ok || !keyword_ok || !rule_ok {
            failures.push(format!(
                "{}: expected {} {:?} [{}], got {got} (exit {:?}): {}",
                c.file.file_name().unwrap().to_string_lossy(),
                c.expect,
                c.keyword,
                c.rule,
                out.status.code(),
                serde_json::to_string(&findings).unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
