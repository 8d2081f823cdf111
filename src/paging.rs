//! Paged reads: which page a caller asks for, and one page of rows.

/// Which page of a list to read: `page` from 1, `page_size` rows per page. Validated by
/// the HTTP boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
}

impl PageRequest {
    /// The offset of this page's first row, or `None` when the page starts past `total`
    /// rows (so the query can be skipped, however large `page` is).
    pub fn offset_within(&self, total: u64) -> Option<u64> {
        let offset = self.page.checked_sub(1)?.checked_mul(self.page_size)?;
        (offset < total).then_some(offset)
    }
}

/// One page of rows, and how many rows all pages hold together.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub entries: Vec<T>,
    pub total: u64,
}

impl<T> Page<T> {
    pub fn empty(total: u64) -> Self {
        Self {
            entries: Vec::new(),
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PageRequest;

    #[test]
    fn offsets_past_the_end_or_overflowing_read_nothing() {
        let page = |page, page_size| PageRequest { page, page_size };
        assert_eq!(page(1, 50).offset_within(0), None);
        assert_eq!(page(1, 50).offset_within(1), Some(0));
        assert_eq!(page(2, 50).offset_within(50), None);
        assert_eq!(page(2, 50).offset_within(51), Some(50));
        assert_eq!(page(u64::MAX, 300).offset_within(u64::MAX), None);
        assert_eq!(page(0, 50).offset_within(10), None);
    }
}
