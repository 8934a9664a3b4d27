//! A minimal Prometheus text-format (0.0.4) encoder: families with HELP/TYPE, escaped
//! labels, counters, gauges and histograms. Small enough to test completely.

use std::fmt::Write;

pub struct Encoder {
    out: String,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{value}")
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            out: String::with_capacity(4096),
        }
    }
}

impl Encoder {
    /// Starts a metric family; every sample of it must follow before the next family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.out, "{name}{} {}", labels(pairs), number(value));
    }

    /// One histogram series: cumulative `(upper_bound, count)` pairs, then sum and count.
    pub fn histogram(
        &mut self,
        name: &str,
        pairs: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        for (bound, cumulative) in buckets {
            let le = number(*bound);
            let mut with_le: Vec<(&str, &str)> = pairs.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, *cumulative as f64);
        }
        let mut with_inf: Vec<(&str, &str)> = pairs.to_vec();
        with_inf.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_inf, count as f64);
        self.sample(&format!("{name}_sum"), pairs, sum);
        self.sample(&format!("{name}_count"), pairs, count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_families_labels_and_histograms() {
        let mut e = Encoder::default();
        e.family("chatgate_requests_total", "counter", "Requests.");
        e.sample("chatgate_requests_total", &[("model", "a\"b\\c\nd")], 3.0);
        e.family("chatgate_request_duration_seconds", "histogram", "Latency.");
        e.histogram(
            "chatgate_request_duration_seconds",
            &[("model", "echo")],
            &[(0.001, 1), (0.002, 3)],
            0.004,
            4,
        );
        let text = e.finish();
        assert!(text.contains("# TYPE chatgate_requests_total counter\n"));
        assert!(text.contains(r#"chatgate_requests_total{model="a\"b\\c\nd"} 3"#));
        assert!(
            text.contains(r#"chatgate_request_duration_seconds_bucket{model="echo",le="0.002"} 3"#)
        );
        assert!(
            text.contains(r#"chatgate_request_duration_seconds_bucket{model="echo",le="+Inf"} 4"#)
        );
        assert!(text.contains("chatgate_request_duration_seconds_count{model=\"echo\"} 4\n"));
    }
}
