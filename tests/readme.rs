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
