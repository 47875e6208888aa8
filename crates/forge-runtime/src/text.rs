//! How Forge words two things in its error messages, the same way everywhere: the message a
//! panic was raised with, and a duration.

use std::any::Any;
use std::time::Duration;

/// The message a panic was raised with (`panic!("..")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// A duration as options are written (`"10s"`, `"300ms"`): whole seconds in seconds, whole
/// milliseconds in milliseconds, anything finer as Rust prints it (`"1.5ms"`), so that no
/// part of it is dropped.
pub fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_every_part() {
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_millis(300)), "300ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(duration(Duration::from_micros(500)), "500µs");
        assert_eq!(duration(Duration::ZERO), "0s");
    }

    #[test]
    fn panic_messages_of_both_string_kinds() {
        let r = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*r), "boom 1");
        let r = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        assert_eq!(panic_message(&*r), "boom");
        let r = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(panic_message(&*r), "(non-string panic payload)");
    }
}
