//! Latency percentiles.

/// p50/p90/p99/max in milliseconds of `samples_us` (microseconds); sorts in place.
pub fn percentiles(samples_us: &mut [u64]) -> serde_json::Value {
    if samples_us.is_empty() {
        return serde_json::json!({"p50_ms": null, "p90_ms": null, "p99_ms": null, "max_ms": null});
    }
    samples_us.sort_unstable();
    let at = |q: f64| {
        let i = ((samples_us.len() as f64 - 1.0) * q).round() as usize;
        samples_us[i] as f64 / 1000.0
    };
    serde_json::json!({
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": samples_us[samples_us.len() - 1] as f64 / 1000.0,
    })
}

pub fn p99_ms(summary: &serde_json::Value) -> f64 {
    summary["p99_ms"].as_f64().unwrap_or(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_ramp() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p["max_ms"], 100.0);
        assert_eq!(p["p50_ms"], 51.0);
        assert_eq!(p99_ms(&p), 99.0);
        assert!(percentiles(&mut [])["p99_ms"].is_null());
    }
}
