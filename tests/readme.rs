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
