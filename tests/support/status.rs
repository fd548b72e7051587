//! What a refused call must say.

use tonic::{Code, Status};

/// Asserts that `err` has `code` and that its message mentions every one of `needles`
/// (the fields it names, the state it was in).
pub fn assert_code(err: &Status, code: Code, needles: &[&str]) {
    assert_eq!(err.code(), code, "{}", err.message());
    for n in needles {
        assert!(
            err.message().contains(n),
            "`{}` does not mention `{n}`",
            err.message()
        );
    }
}
