//! Property tests of name validation, alone and through the mount.

mod common;

use std::os::unix::ffi::OsStrExt;

use proptest::prelude::*;
use vfolderfs::name::{NAME_MAX, TRASH_DIR, validate_bytes};

fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[a-z.~ -]{0,8}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'/'), Just(0u8), Just(b'a'), Just(0xffu8)],
            0..6
        ),
        Just(vec![b'a'; 255]),
        Just(vec![b'a'; 256]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepted_names_obey_every_rule(bytes in name_bytes()) {
        if let Ok(s) = validate_bytes(&bytes) {
            prop_assert!(!s.is_empty() && s.len() <= NAME_MAX);
            prop_assert!(!s.contains('/'));
            prop_assert!(!s.chars().any(|c| c.is_control()));
            prop_assert!(s != "." && s != ".." && s != TRASH_DIR);
            prop_assert!(!s.starts_with(char::is_whitespace) && !s.ends_with(char::is_whitespace));
            prop_assert!(!s.starts_with('-'));
        } else {
            let ok_utf8 = std::str::from_utf8(&bytes).ok();
            let fine = ok_utf8.is_some_and(|s| !s.is_empty() && s.len() <= NAME_MAX
                && !s.contains('/') && !s.chars().any(|c| c.is_control())
                && s != "." && s != ".." && s != TRASH_DIR
                && !s.starts_with(char::is_whitespace) && !s.ends_with(char::is_whitespace)
                && !s.starts_with('-'));
            prop_assert!(!fine, "a valid name was refused: {:?}", bytes);
        }
    }
}

#[test]
fn names_through_the_mount_match_the_rules() {
    let m = common::Mount::new(&[]);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(150));
    let made = std::cell::RefCell::new(std::collections::BTreeSet::new());
    runner
        .run(&name_bytes(), |bytes| {
            // The kernel refuses these before they reach us.
            if bytes.is_empty()
                || bytes.contains(&b'/')
                || bytes.contains(&0)
                || bytes == b"."
                || bytes == b".."
            {
                return Ok(());
            }
            let path = m.mnt.join(std::ffi::OsStr::from_bytes(&bytes));
            let r = std::fs::create_dir(&path);
            match validate_bytes(&bytes) {
                Ok(s) => {
                    if made.borrow().contains(s) {
                        prop_assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EEXIST));
                    } else {
                        prop_assert!(r.is_ok(), "{:?}: {:?}", s, r);
                        made.borrow_mut().insert(s.to_string());
                    }
                }
                Err(e) => {
                    let got = r.unwrap_err().raw_os_error();
                    let want = if bytes.len() > NAME_MAX {
                        libc::ENAMETOOLONG
                    } else {
                        libc::EINVAL
                    };
                    prop_assert!(
                        got == Some(want)
                            || (bytes == TRASH_DIR.as_bytes() && got == Some(libc::EEXIST)),
                        "{:?} ({}): {:?}",
                        bytes,
                        e,
                        got
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&m.store.ok(&["list", "--all", "--json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        made.borrow().len(),
        "only accepted names were written"
    );
}
