pub async fn report(_l: &crate::config::Loaded, _b: super::BotpressView, _t: std::time::Duration) -> String { String::new() }
