//! Report pages ([`SecurityPage`]) read with `COPY … TO STDOUT (FORMAT binary)`.
//!
//! The reports walk every user a thousand at a time. Read as query rows, each user cost the
//! driver a row object and, for each of its fourteen values, a type check that clones and
//! drops the column's type description: about half of Bulwark's CPU in an export of a
//! million users (`perf`, 2026-12-03). COPY's binary format sends the same values in the
//! same encoding without the row machinery, and the page is filled straight from it.
//!
//! The format (PostgreSQL's documentation of `COPY`, "Binary Format"): an 11-byte
//! signature, a flags word, a header extension; then per row a 16-bit field count and per
//! field a 32-bit length (−1 for NULL) and that many bytes; a field count of −1 ends it.
//! The statement casts every column to the type read here, and every number and boolean is
//! checked for its length: what does not fit is refused, naming the column.

use bulwark_store::{SecurityPage, SecurityRow, UserId};

/// The statement reading users with ids in `(after_id, up_to]`, at most `limit` of them, in
/// id order, as [`REPORT_COLUMNS`](crate::REPORT_COLUMNS). `COPY` takes no parameters: the
/// bounds are numbers written in.
pub(crate) fn statement(after_id: UserId, up_to: UserId, limit: u32) -> String {
    format!(
        "COPY (SELECT {} FROM users WHERE id > {after_id} AND id <= {up_to} ORDER BY id \
         LIMIT {limit}) TO STDOUT (FORMAT binary)",
        crate::REPORT_COLUMNS
    )
}

/// Rows a page is given room for before its answer comes (the reports ask for 1,000).
pub(crate) const ROOM_FOR: usize = 1000;
/// Bytes of COPY answer a row of generated users takes (about 155), to size the buffer.
pub(crate) const BYTES_PER_ROW: usize = 160;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Flags bit 16 says each row starts with an OID; bits 17–31 are for future formats a
/// reader must refuse.
const UNKNOWN_FLAGS: u32 = 0xffff_0000;

/// Fourteen values a row, in the order of `REPORT_COLUMNS`.
const FIELDS: i16 = 14;

/// What is wrong with a COPY answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyError(String);

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "report page read by COPY: {}", self.0)
    }
}

fn error(what: impl Into<String>) -> CopyError {
    CopyError(what.into())
}

/// Adds the users of a whole binary COPY answer (every message's data, in order) to `page`.
pub(crate) fn read_page(data: &[u8], page: &mut SecurityPage) -> Result<(), CopyError> {
    let mut r = Reader { data, at: 0 };
    if r.take(SIGNATURE.len())? != SIGNATURE {
        return Err(error("not the binary COPY signature"));
    }
    if r.u32()? & UNKNOWN_FLAGS != 0 {
        return Err(error("header flags this reader does not know"));
    }
    let extension = r.u32()?;
    r.take(usize::try_from(extension).map_err(|_| error("header extension too long"))?)?;
    loop {
        match r.i16()? {
            -1 => break,
            FIELDS => page.push(r.row()?),
            n => return Err(error(format!("{n} values in a row, not {FIELDS}"))),
        }
    }
    if r.at != data.len() {
        return Err(error("data after the end mark"));
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn row(&mut self) -> Result<SecurityRow<'a>, CopyError> {
        Ok(SecurityRow {
            id: self.int8("id")?,
            login: self.text("login")?,
            email: self.nullable_text("email")?,
            display_name: self.text("display_name")?,
            active: self.bool("active")?,
            created_at: self.int8("created_at")?,
            last_login_at: self.nullable_int8("last_login_at")?,
            password_changed_at: self.nullable_int8("password_changed_at")?,
            has_password: self.bool("has_password")?,
            device_account: self.bool("device_account")?,
            grace_started_at: self.nullable_int8("grace_started_at")?,
            groups: self.text("groups")?,
            totp_active: self.bool("totp_active")?,
            recovery_codes_left: crate::count(self.int8("codes_left")?),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CopyError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| error("the data ends in the middle of a row"))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CopyError> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, CopyError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CopyError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A value's bytes, `None` for NULL.
    fn field(&mut self) -> Result<Option<&'a [u8]>, CopyError> {
        match i32::from_be_bytes(self.array()?) {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| error(format!("a length of {n}")))?;
                self.take(n).map(Some)
            }
        }
    }

    fn nullable_int8(&mut self, column: &str) -> Result<Option<i64>, CopyError> {
        match self.field()? {
            None => Ok(None),
            Some(b) => <[u8; 8]>::try_from(b)
                .map(|b| Some(i64::from_be_bytes(b)))
                .map_err(|_| error(format!("{column}: {} bytes, not a bigint", b.len()))),
        }
    }

    fn int8(&mut self, column: &str) -> Result<i64, CopyError> {
        self.nullable_int8(column)?
            .ok_or_else(|| error(format!("{column}: NULL")))
    }

    fn bool(&mut self, column: &str) -> Result<bool, CopyError> {
        match self.field()? {
            Some([b]) => Ok(*b != 0),
            Some(b) => Err(error(format!("{column}: {} bytes, not a boolean", b.len()))),
            None => Err(error(format!("{column}: NULL"))),
        }
    }

    fn nullable_text(&mut self, column: &str) -> Result<Option<&'a str>, CopyError> {
        self.field()?
            .map(|b| std::str::from_utf8(b).map_err(|_| error(format!("{column}: not UTF-8"))))
            .transpose()
    }

    fn text(&mut self, column: &str) -> Result<&'a str, CopyError> {
        self.nullable_text(column)?
            .ok_or_else(|| error(format!("{column}: NULL")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A binary COPY answer as PostgreSQL writes it.
    struct Copy(Vec<u8>);

    impl Copy {
        fn new() -> Self {
            let mut v = SIGNATURE.to_vec();
            v.extend(0u32.to_be_bytes());
            v.extend(0u32.to_be_bytes());
            Self(v)
        }
        fn row(mut self, fields: &[Option<&[u8]>]) -> Self {
            self.0
                .extend(i16::try_from(fields.len()).unwrap().to_be_bytes());
            for f in fields {
                match f {
                    None => self.0.extend((-1i32).to_be_bytes()),
                    Some(b) => {
                        self.0.extend(i32::try_from(b.len()).unwrap().to_be_bytes());
                        self.0.extend(*b);
                    }
                }
            }
            self
        }
        fn end(mut self) -> Vec<u8> {
            self.0.extend((-1i16).to_be_bytes());
            self.0
        }
    }

    fn user(
        id: i64,
        email: Option<&'static [u8]>,
        last_login: Option<i64>,
    ) -> Vec<Option<Vec<u8>>> {
        let int = |n: i64| Some(n.to_be_bytes().to_vec());
        vec![
            int(id),
            Some(b"alice".to_vec()),
            email.map(<[u8]>::to_vec),
            Some("Alice Émile".as_bytes().to_vec()),
            Some(vec![1]),
            int(1_700_000_000),
            last_login.and_then(int),
            None,
            Some(vec![1]),
            Some(vec![0]),
            int(1_700_000_100),
            Some(b"admins,staff".to_vec()),
            Some(vec![1]),
            int(7),
        ]
    }

    fn copy_of(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        rows.iter()
            .fold(Copy::new(), |c, r| {
                let fields: Vec<Option<&[u8]>> = r.iter().map(|f| f.as_deref()).collect();
                c.row(&fields)
            })
            .end()
    }

    fn read(data: &[u8]) -> Result<SecurityPage, CopyError> {
        let mut page = SecurityPage::default();
        read_page(data, &mut page).map(|()| page)
    }

    #[test]
    fn rows_are_read_with_their_nulls() {
        let data = copy_of(&[
            user(1, Some(b"alice@example.com"), Some(1_700_000_500)),
            user(2, None, None),
        ]);
        let page = read(&data).unwrap();
        let rows: Vec<SecurityRow<'_>> = page.iter().collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            SecurityRow {
                id: 1,
                login: "alice",
                email: Some("alice@example.com"),
                display_name: "Alice Émile",
                active: true,
                groups: "admins,staff",
                created_at: 1_700_000_000,
                last_login_at: Some(1_700_000_500),
                password_changed_at: None,
                has_password: true,
                device_account: false,
                grace_started_at: Some(1_700_000_100),
                totp_active: true,
                recovery_codes_left: 7,
            }
        );
        assert_eq!(
            (rows[1].id, rows[1].email, rows[1].last_login_at),
            (2, None, None)
        );
    }

    #[test]
    fn an_answer_without_rows_is_an_empty_page() {
        assert_eq!(read(&Copy::new().end()).unwrap().len(), 0);
    }

    #[test]
    fn a_header_extension_is_skipped() {
        let mut data = SIGNATURE.to_vec();
        data.extend(0u32.to_be_bytes());
        data.extend(3u32.to_be_bytes());
        data.extend(b"abc");
        data.extend((-1i16).to_be_bytes());
        assert_eq!(read(&data).unwrap().len(), 0);
    }

    #[test]
    fn malformed_answers_are_refused_by_what_is_wrong() {
        let good = copy_of(&[user(1, None, None)]);
        let mut wrong_signature = good.clone();
        wrong_signature[0] = b'X';
        let mut oids = good.clone();
        oids[11..15].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        let mut bool_as_int = user(1, None, None);
        bool_as_int[4] = Some(vec![0, 0, 0, 1]);
        let mut int4_id = user(1, None, None);
        int4_id[0] = Some(vec![0, 0, 0, 1]);
        let mut null_login = user(1, None, None);
        null_login[1] = None;
        let mut latin1 = user(1, None, None);
        latin1[3] = Some(vec![b'J', 0xe9, b'r']);
        let mut trailing = good.clone();
        trailing.push(0);
        let mut negative = Copy::new().0;
        negative.extend(14i16.to_be_bytes());
        negative.extend((-7i32).to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("signature", wrong_signature, "signature"),
            ("oids", oids, "flags"),
            (
                "truncated",
                good[..good.len() - 5].to_vec(),
                "ends in the middle",
            ),
            (
                "no end mark",
                good[..good.len() - 2].to_vec(),
                "ends in the middle",
            ),
            ("trailing", trailing, "after the end"),
            (
                "13 values",
                copy_of(&[user(1, None, None)[..13].to_vec()]),
                "13 values",
            ),
            ("bool", copy_of(&[bool_as_int]), "active: 4 bytes"),
            ("int4", copy_of(&[int4_id]), "id: 4 bytes"),
            ("null", copy_of(&[null_login]), "login: NULL"),
            ("utf-8", copy_of(&[latin1]), "display_name: not UTF-8"),
            ("negative length", negative, "a length of -7"),
        ];
        for (name, data, expected) in cases {
            let err = read(&data).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn the_statement_names_its_bounds() {
        assert_eq!(
            statement(1000, 2000, 1000),
            format!(
                "COPY (SELECT {} FROM users WHERE id > 1000 AND id <= 2000 ORDER BY id LIMIT \
                 1000) TO STDOUT (FORMAT binary)",
                crate::REPORT_COLUMNS
            )
        );
    }
}
