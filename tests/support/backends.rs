//! One test body, run on both database backends.

/// Runs each `async fn name(backend: Backend)` of the invoking module on both
/// backends, as the tests `name::sqlite` and `name::postgres`:
///
/// ```ignore
/// custodia_tests::both_backends!(lifecycle, bad_input);
///
/// async fn lifecycle(backend: custodia_tests::Backend) { /* ... */ }
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        )*
    };
}
