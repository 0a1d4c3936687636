//! `--pages`: which pages of a document an operation touches (`all`, `3`, `1,4`, `2-5`, `7-`),
//! 1-based as poppler counts them. Pages past the end are skipped, as `pdftoppm -l` does.

#[derive(Debug, Clone, PartialEq)]
pub enum PageSelection {
    All,
    /// Inclusive 1-based ranges; `None` as an end means "to the last page".
    Ranges(Vec<(usize, Option<usize>)>),
}

impl PageSelection {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(PageSelection::All);
        }
        let bad = || format!("--pages {text:?}: expected all, N, N-M, N- or a comma-separated list of them");
        let number = |s: &str| s.trim().parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(bad);
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((first, "")) => (number(first)?, None),
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if last < first {
                        return Err(bad());
                    }
                    (first, Some(last))
                }
                None => {
                    let page = number(part)?;
                    (page, Some(page))
                }
            };
            ranges.push(range);
        }
        Ok(PageSelection::Ranges(ranges))
    }

    /// The selected 0-based page indexes of a document of `count` pages, in order, once each.
    pub fn indexes(&self, count: usize) -> Vec<usize> {
        match self {
            PageSelection::All => (0..count).collect(),
            PageSelection::Ranges(ranges) => {
                let mut picked = vec![false; count];
                let mut order = Vec::new();
                for &(first, last) in ranges {
                    let last = last.unwrap_or(count).min(count);
                    for page in first..=last {
                        if !picked[page - 1] {
                            picked[page - 1] = true;
                            order.push(page - 1);
                        }
                    }
                }
                order
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ranges_and_open_ends() {
        let pick = |s: &str, n| PageSelection::parse(s).unwrap().indexes(n);
        assert_eq!(pick("all", 3), vec![0, 1, 2]);
        assert_eq!(pick("2", 3), vec![1]);
        assert_eq!(pick("1,3", 3), vec![0, 2]);
        assert_eq!(pick("2-9", 4), vec![1, 2, 3]);
        assert_eq!(pick("3-", 5), vec![2, 3, 4]);
        assert_eq!(pick("5", 2), Vec::<usize>::new());
        assert_eq!(pick("2,1-2", 3), vec![1, 0]);
        for bad in ["0", "x", "3-1", "", "1,,2"] {
            assert!(PageSelection::parse(bad).is_err(), "{bad}");
        }
    }
}
