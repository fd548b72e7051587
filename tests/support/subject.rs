//! Subject identifiers as requests carry them.

use custodia_proto::common::v1::SubjectRef;

/// The subject identified by e-mail address `address`.
pub fn email(address: &str) -> SubjectRef {
    SubjectRef {
        r#type: "email".into(),
        value: address.into(),
    }
}

/// Subject number `i` of a crowd: `subject-<i>@example.org`.
pub fn subject(i: usize) -> SubjectRef {
    email(&format!("subject-{i}@example.org"))
}

/// Subjects `0..n` of the crowd (see [`subject`]).
pub fn subjects(n: usize) -> Vec<SubjectRef> {
    (0..n).map(subject).collect()
}
