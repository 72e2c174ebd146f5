//! The README's configuration table must list every setting the program
//! knows, under the names the program uses, with the defaults it uses.

use fileupload::config::SETTINGS;

#[test]
fn readme_lists_every_setting_with_its_default() {
    let readme = include_str!("../README.md");
    for setting in SETTINGS {
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", setting.name)))
            .unwrap_or_else(|| panic!("README has no row for {}", setting.name));
        assert!(row.contains(&format!("`{}`", setting.env_var())), "{row}");
        assert!(row.contains(&format!("`{}`", setting.default)), "{row}");
        if setting.option {
            assert!(
                row.contains(&format!("`--{} ", setting.option_name())),
                "{row}"
            );
        } else {
            assert!(
                row.contains("| — |"),
                "{} must not be an option: {row}",
                setting.name
            );
        }
    }
    let rows = readme
        .lines()
        .filter(|l| l.starts_with("| `") && l.contains("| `FILEUPLOAD_"))
        .count();
    assert_eq!(
        rows,
        SETTINGS.len(),
        "README lists settings the program does not know"
    );
}

/// The README's size of the parser ("`FILE`, about N lines of code and M
/// of unit tests") stays true: within 15% of the files as they are.
#[test]
fn readme_states_the_parser_size_truly() {
    let readme = include_str!("../README.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let files = [
        ("src/multipart.rs", include_str!("../src/multipart.rs")),
        (
            "src/transfer_encoding.rs",
            include_str!("../src/transfer_encoding.rs"),
        ),
    ];
    for (path, source) in files {
        let lead = format!("`{path}`, about ");
        let at = readme
            .find(&lead)
            .unwrap_or_else(|| panic!("README does not give the size of {path}"));
        // Words without the punctuation that follows them in the sentence.
        let words: Vec<&str> = readme[at + lead.len()..]
            .split(' ')
            .take(9)
            .map(|w| w.trim_end_matches([';', ')', ':', ',']))
            .collect();
        assert_eq!(
            words[1..5],
            ["lines", "of", "code", "and"],
            "{path}: {words:?}"
        );
        assert_eq!(words[6..9], ["of", "unit", "tests"], "{path}: {words:?}");
        let number = |w: &str| -> f64 { w.parse().unwrap() };
        let (code, tests) = (number(words[0]), number(words[5]));
        let lines: Vec<&str> = source.lines().collect();
        let split = lines
            .iter()
            .position(|l| *l == "#[cfg(test)]")
            .unwrap_or_else(|| panic!("{path} has no test module"));
        let actual = (split as f64, (lines.len() - split) as f64);
        for (said, is) in [(code, actual.0), (tests, actual.1)] {
            assert!(
                (said - is).abs() <= is * 0.15,
                "{path}: README says about {said} lines, it has {is}"
            );
        }
    }
}

/// The README's error code table lists exactly the program's codes, each
/// with the HTTP status the program answers it with.
#[test]
fn readme_lists_every_error_code_with_its_status() {
    use fileupload::ErrorCode;
    let readme = include_str!("../README.md");
    let mut listed = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `ERR_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let text = cells[1].trim_matches('`');
        let code = ErrorCode::parse(text)
            .unwrap_or_else(|| panic!("README lists {text}, which the program does not know"));
        let status: u16 = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("no HTTP status in {row}"));
        assert_eq!(status, code.status(), "{row}");
        assert!(!cells[3].is_empty(), "no 'when' in {row}");
        listed.push(code);
    }
    for code in ErrorCode::ALL {
        let rows = listed.iter().filter(|c| *c == code).count();
        assert_eq!(rows, 1, "README lists {code} {rows} times");
    }
    assert_eq!(listed.len(), ErrorCode::ALL.len());
    // Every status a code has is in the status table too.
    for code in ErrorCode::ALL {
        assert!(
            readme
                .lines()
                .any(|l| l.starts_with(&format!("| {} |", code.status()))),
            "the status table has no row for {} ({code})",
            code.status()
        );
    }
}
