//! A latency histogram with log-linear buckets (16 per power of two): constant memory,
//! mergeable by addition, and any percentile it reports is within one bucket's width
//! (≤ 6.25 % of the value) of the exact one.
//!
//! Cluster mode publishes histograms in each instance's snapshot: serialized as the list of
//! non-empty buckets `[[index, count], …]` (a latency distribution fills a few dozen of the
//! buckets), and merged by adding counts, so a cluster percentile is as exact as a local one.

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two above `LINEAR`.
const SUB_BITS: u32 = 4;
/// The largest power of two tracked; larger values land in the last bucket (~ 70 minutes).
const MAX_OCTAVE: u32 = 22;
pub const BUCKETS: usize =
    (LINEAR as usize) + ((MAX_OCTAVE - SUB_BITS + 1) as usize) * (1 << SUB_BITS);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

pub fn bucket_of(value_ms: u64) -> usize {
    if value_ms < LINEAR {
        return value_ms as usize;
    }
    let octave = 63 - value_ms.leading_zeros();
    if octave > MAX_OCTAVE {
        return BUCKETS - 1;
    }
    let sub = (value_ms >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((octave - SUB_BITS) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The smallest value of bucket `index` and the first value of the next one.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    if index < LINEAR as usize {
        return (index as u64, index as u64 + 1);
    }
    let rel = index - LINEAR as usize;
    let octave = (rel >> SUB_BITS) as u32 + SUB_BITS;
    let sub = (rel & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    let low = (1u64 << octave) + sub * width;
    (low, low + width)
}

/// The wire form: non-empty buckets only.
impl serde::Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let filled = self.counts.iter().filter(|&&c| c > 0).count();
        let mut seq = serializer.serialize_seq(Some(filled))?;
        for (index, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                seq.serialize_element(&(index, count))?;
            }
        }
        seq.end()
    }
}

/// Reads the wire form; buckets this build does not have are dropped rather than refusing a
/// peer's whole snapshot (the snapshot's version says when the layout changes).
impl<'de> serde::Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(usize, u32)>::deserialize(deserializer)?;
        let mut histogram = Histogram::default();
        for (index, count) in pairs {
            if let Some(bucket) = histogram.counts.get_mut(index) {
                *bucket = bucket.saturating_add(count);
                histogram.total += u64::from(count);
            }
        }
        Ok(histogram)
    }
}

impl Histogram {
    pub fn record(&mut self, value_ms: u64) {
        let bucket = &mut self.counts[bucket_of(value_ms)];
        *bucket = bucket.saturating_add(1);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                let (low, high) = bucket_bounds(index);
                return Some(if high - low == 1 {
                    low as f64
                } else {
                    (low + high) as f64 / 2.0
                });
            }
        }
        None
    }

    /// Cumulative counts at each power-of-two boundary in milliseconds (1, 2, 4, …), for
    /// Prometheus `le` buckets: exact, because boundaries fall on bucket edges.
    pub fn cumulative_at_powers_of_two(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cumulative = 0u64;
        let mut next_edge = 1u64;
        for (index, &count) in self.counts.iter().enumerate() {
            let (low, _) = bucket_bounds(index);
            while low >= next_edge {
                out.push((next_edge, cumulative));
                next_edge *= 2;
            }
            cumulative += u64::from(count);
        }
        while next_edge <= 1u64 << MAX_OCTAVE {
            out.push((next_edge, cumulative));
            next_edge *= 2;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        for index in 0..BUCKETS - 1 {
            let (_, high) = bucket_bounds(index);
            let (next_low, _) = bucket_bounds(index + 1);
            assert_eq!(high, next_low, "gap after bucket {index}");
        }
        for value in [0, 1, 15, 16, 17, 31, 32, 100, 1000, 65_535, 1 << 22] {
            let (low, high) = bucket_bounds(bucket_of(value));
            assert!(
                low <= value && value < high,
                "{value} not in [{low},{high})"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn p95_p99_within_one_bucket_of_exact_on_random_latencies() {
        let mut rng = rand::rng();
        let mut values: Vec<u64> = (0..10_000).map(|_| rng.random_range(1..30_000)).collect();
        let mut histogram = Histogram::default();
        for &v in &values {
            histogram.record(v);
        }
        values.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            let estimate = histogram.quantile(q).expect("non-empty");
            let (low, high) = bucket_bounds(bucket_of(exact));
            assert!(
                (estimate - exact as f64).abs() <= (high - low) as f64,
                "q={q}: exact {exact}, estimate {estimate}"
            );
        }
    }

    #[test]
    fn cumulative_counts_at_powers_of_two_are_exact() {
        let mut histogram = Histogram::default();
        for v in [0, 1, 3, 4, 100, 5000] {
            histogram.record(v);
        }
        let cumulative: std::collections::HashMap<u64, u64> = histogram
            .cumulative_at_powers_of_two()
            .into_iter()
            .collect();
        assert_eq!(cumulative[&1], 1); // 0
        assert_eq!(cumulative[&4], 3); // 0, 1, 3
        assert_eq!(cumulative[&128], 5);
        assert_eq!(cumulative[&8192], 6);
    }

    #[test]
    fn wire_form_lists_only_filled_buckets_and_reads_back_equal() {
        let mut histogram = Histogram::default();
        for v in [0, 3, 3, 100, 5000, u64::MAX] {
            histogram.record(v);
        }
        let json = serde_json::to_value(&histogram).expect("serialize");
        assert_eq!(json.as_array().map(Vec::len), Some(5), "{json}");
        let back: Histogram = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, histogram);
        // A bucket index from a different layout is dropped, not an error.
        let odd: Histogram =
            serde_json::from_str(&format!("[[1,2],[{},5]]", BUCKETS + 3)).expect("tolerant");
        assert_eq!(odd.count(), 2);
    }

    proptest! {
        #[test]
        fn merge_equals_recording_everything_in_one(a in proptest::collection::vec(0u64..100_000, 0..200), b in proptest::collection::vec(0u64..100_000, 0..200)) {
            let (mut ha, mut hb, mut hall) = (Histogram::default(), Histogram::default(), Histogram::default());
            for &v in &a { ha.record(v); hall.record(v); }
            for &v in &b { hb.record(v); hall.record(v); }
            ha.merge(&hb);
            prop_assert_eq!(ha, hall);
        }
    }
}
