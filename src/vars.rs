//! A request's CGI meta-variables, kept as one text and an index.
//!
//! nginx hands a FastCGI responder thirty-odd variables with every
//! request, a status poll included. As a `String` for each name and each
//! value they were about sixty allocations a poll, and `malloc` and `free`
//! took about 9% of the daemon's samples (`perf`, the benchmark's status
//! floor). Here a request's variables take two: the text of every name and
//! value in order, and where each ends.

/// CGI meta-variables in the order the transport gave them. A name given
/// twice keeps both; [`Vars::get`] finds the first, as a linear search of
/// pairs would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    text: String,
    /// For each pair, where its name and its value end in `text`; the name
    /// begins where the previous pair's value ended.
    ends: Vec<(usize, usize)>,
}

impl Vars {
    /// Room for about `bytes` of names and values, and `pairs` pairs.
    pub fn with_capacity(bytes: usize, pairs: usize) -> Vars {
        Vars {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(pairs),
        }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// The first value given for `name`, empty or not.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every pair as owned strings: an environment for another program.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Vars {
        let mut vars = Vars::default();
        for (name, value) in pairs {
            vars.push(name.as_ref(), value.as_ref());
        }
        vars
    }
}

impl From<Vec<(String, String)>> for Vars {
    fn from(pairs: Vec<(String, String)>) -> Vars {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_in_order_with_empty_names_and_values() {
        let given = [("A", "1"), ("", "no name"), ("EMPTY", ""), ("A", "2")];
        let vars: Vars = given.into_iter().collect();
        assert_eq!(vars.iter().collect::<Vec<_>>(), given);
        assert_eq!(vars.len(), 4);
        assert_eq!(vars.get("A"), Some("1"), "the first of a name given twice");
        assert_eq!(vars.get("EMPTY"), Some(""));
        assert_eq!(vars.get(""), Some("no name"));
        assert_eq!(vars.get("B"), None);
        assert_eq!(vars.to_pairs()[1], (String::new(), "no name".to_owned()));
    }

    #[test]
    fn a_name_is_not_found_inside_a_neighbour() {
        // "AB" + "C" and "A" + "BC" have the same text: the index tells.
        let vars: Vars = [("AB", "C"), ("A", "BC")].into_iter().collect();
        assert_eq!(vars.get("A"), Some("BC"));
        assert_eq!(vars.get("AB"), Some("C"));
        assert_eq!(vars.get("ABC"), None);
        assert!(Vars::default().is_empty());
    }
}
