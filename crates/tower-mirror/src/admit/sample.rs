//! Sampling: which share of the requests a target's filter lets through it receives, by a
//! deterministic counter or by a sticky key.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderName};

use crate::head::{ClientAddr, RequestHead, first_value};
use crate::target::SampleKey;

/// A sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sampled {
    /// Not this request.
    No,
    /// This request, by its key or by the counter.
    Yes,
    /// This request, by the counter, because a key sampler found no key.
    WithoutKey,
}

/// Decides which requests a target receives: by its key when it has a key sampler and the
/// request carries the key, else by its counter.
///
/// The counter chooses request number `n` (counting from 0) when
/// `⌊(n+1)·p/100⌋ > ⌊n·p/100⌋`: the chosen requests are spread like the steps of a line drawn
/// with Bresenham's algorithm, so any 100 consecutive requests contain exactly `p` chosen ones
/// and 50 % is every other request.
pub(crate) struct Sampler {
    key: Option<Key>,
}

/// Where the key comes from, checked.
enum Key {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
    Custom(crate::target::KeyFn),
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("by_key", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// The counter sampler.
    pub(crate) fn counter() -> Self {
        Self { key: None }
    }

    /// A sampler by `key`, falling back to the counter; the error says why the key is bad.
    pub(crate) fn by_key(key: &SampleKey) -> Result<Self, String> {
        let key = match key {
            SampleKey::Header(name) => Key::Header(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("header:{name}: not a valid header name"))?,
            ),
            SampleKey::Cookie(name) => Key::Cookie(name.clone()),
            SampleKey::Query(name) => Key::Query(name.clone()),
            SampleKey::ClientIp => Key::ClientIp,
            SampleKey::Custom(key) => Key::Custom(key.clone()),
        };
        Ok(Self { key: Some(key) })
    }

    /// The key's value in `request` (not empty), when this samples by a key and the request
    /// has it: what a Kafka recording keys its record by.
    pub(crate) fn key_value(&self, request: &RequestHead<'_>) -> Option<Vec<u8>> {
        let value = self.key.as_ref()?.value(request)?;
        (!value.is_empty()).then(|| value.into_owned())
    }

    /// Decides for `request` at `percentage`, the counter being at `position`.
    #[inline]
    pub(crate) fn decide(
        &self,
        percentage: u64,
        position: &AtomicU64,
        request: &RequestHead<'_>,
    ) -> Sampled {
        if percentage == 0 {
            return Sampled::No;
        }
        let Some(key) = &self.key else {
            return if sample(percentage, position) {
                Sampled::Yes
            } else {
                Sampled::No
            };
        };
        match key.value(request) {
            Some(value) if !value.is_empty() => {
                if chosen_by_key(&value, percentage) {
                    Sampled::Yes
                } else {
                    Sampled::No
                }
            }
            _ if sample(percentage, position) => Sampled::WithoutKey,
            _ => Sampled::No,
        }
    }
}

/// Takes the next request number from `position` and says whether that request is mirrored
/// at `percentage`.
#[inline]
fn sample(percentage: u64, position: &AtomicU64) -> bool {
    match percentage {
        0 => false,
        100.. => true,
        p => is_chosen(position.fetch_add(1, Ordering::Relaxed), p),
    }
}

#[inline]
fn is_chosen(n: u64, percentage: u64) -> bool {
    // The pattern repeats every 100 requests, so reducing first avoids overflow.
    let n = n % 100;
    (n + 1) * percentage / 100 > n * percentage / 100
}

/// The key decision, as [`SampleKey`] documents it: XXH3-64 (seed 0) of the value bytes,
/// mod 10000, below the percentage in hundredths.
pub(crate) fn chosen_by_key(value: &[u8], percentage: u64) -> bool {
    xxhash_rust::xxh3::xxh3_64(value) % 10_000 < percentage * 100
}

impl Key {
    /// The key's value in `request`, if it has one.
    fn value<'a>(&self, request: &RequestHead<'a>) -> Option<Cow<'a, [u8]>> {
        match self {
            Self::Header(name) => {
                first_value(request.headers(), name).map(|v| Cow::Borrowed(v.as_bytes()))
            }
            Self::Cookie(name) => cookie(request, name.as_bytes()).map(Cow::Borrowed),
            Self::Query(name) => {
                let query = request.uri().query()?;
                form_urlencoded::parse(query.as_bytes())
                    .find(|(n, _)| n == name)
                    .map(|(_, value)| match value {
                        Cow::Borrowed(v) => Cow::Borrowed(v.as_bytes()),
                        Cow::Owned(v) => Cow::Owned(v.into_bytes()),
                    })
            }
            Self::ClientIp => {
                let ClientAddr(addr) = request.extensions().get::<ClientAddr>()?;
                Some(Cow::Owned(addr.ip().to_string().into_bytes()))
            }
            Self::Custom(key) => key(request).map(Cow::Owned),
        }
    }
}

/// The value of the first cookie called `name` in the `Cookie` header(s) (RFC 6265 §4.2:
/// `name=value` pairs separated by `;`).
fn cookie<'a>(request: &RequestHead<'a>, name: &[u8]) -> Option<&'a [u8]> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            (pair[..at].trim_ascii() == name).then(|| pair[at + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Request;

    /// A sampler with its percentage and counter position, as a target holds them.
    struct Live(Sampler, u64, AtomicU64);

    fn keyed(percentage: u64, key: SampleKey) -> Live {
        Live(
            Sampler::by_key(&key).unwrap(),
            percentage,
            AtomicU64::new(0),
        )
    }

    fn head_decide(live: &Live, request: &Request<()>) -> Sampled {
        live.0.decide(live.1, &live.2, &RequestHead::of(request))
    }

    #[test]
    fn the_key_value_decides_wherever_it_is_found() {
        let header = keyed(50, SampleKey::header("x-user"));
        let cookie = keyed(50, SampleKey::cookie("uid"));
        let query = keyed(50, SampleKey::query("u"));
        let ip = keyed(50, SampleKey::ClientIp);
        let mut agreed = [0, 0];
        for n in 0..400 {
            let value = format!("10.0.{}.{}", n / 200, n % 200);
            let expected = chosen_by_key(value.as_bytes(), 50);
            agreed[usize::from(expected)] += 1;
            let want = if expected { Sampled::Yes } else { Sampled::No };
            let by_header = Request::get("/").header("x-user", &value).body(()).unwrap();
            assert_eq!(head_decide(&header, &by_header), want);
            let by_cookie = Request::get("/")
                .header("cookie", format!("a=1; uid={value}; b=2"))
                .body(())
                .unwrap();
            assert_eq!(head_decide(&cookie, &by_cookie), want);
            let by_query = Request::get(format!("/x?z=1&u={}", value.replace('.', "%2E")))
                .body(())
                .unwrap();
            assert_eq!(
                head_decide(&query, &by_query),
                want,
                "decoded before hashing"
            );
            let mut by_ip = Request::get("/").body(()).unwrap();
            by_ip
                .extensions_mut()
                .insert(ClientAddr(format!("{value}:4000").parse().unwrap()));
            assert_eq!(head_decide(&ip, &by_ip), want);
        }
        assert!(agreed[0] > 100 && agreed[1] > 100, "{agreed:?}");
    }

    #[test]
    fn another_implementation_agrees_on_every_decision() {
        // XXH3-64 of these values, and their buckets, as Python's `xxhash` package computes
        // them (`xxhash.xxh3_64_intdigest(v)`, `% 10000`): the documented algorithm, not ours.
        for (value, hash, bucket) in [
            (&b""[..], 0x2d06_8005_38d3_94c2_u64, 3138),
            (b"a", 0xe6c6_32b6_1e96_4e1f, 8719),
            (b"user-42", 0x50fe_4b21_cf7b_09cd, 2621),
            (b"127.0.0.1", 0x9a07_1d17_1774_168c, 3964),
        ] {
            assert_eq!(xxhash_rust::xxh3::xxh3_64(value), hash);
            assert_eq!(hash % 10_000, bucket);
            let at = bucket / 100;
            assert!(chosen_by_key(value, at + 1), "{value:?} at {}", at + 1);
            assert!(!chosen_by_key(value, at), "{value:?} at {at}");
        }
    }

    #[test]
    fn shares_nest() {
        for n in 0..2000 {
            let key = format!("user-{n}");
            for (low, high) in [(5, 20), (1, 2), (50, 51), (99, 100)] {
                if chosen_by_key(key.as_bytes(), low) {
                    assert!(chosen_by_key(key.as_bytes(), high), "{key} {low} {high}");
                }
            }
        }
    }

    #[test]
    fn no_key_falls_back_to_the_counter() {
        let s = keyed(50, SampleKey::header("x-user"));
        let plain = Request::get("/").body(()).unwrap();
        let empty = Request::get("/").header("x-user", "").body(()).unwrap();
        let decisions: Vec<_> = (0..4)
            .map(|i| head_decide(&s, if i % 2 == 0 { &plain } else { &empty }))
            .collect();
        assert_eq!(
            decisions,
            [
                Sampled::No,
                Sampled::WithoutKey,
                Sampled::No,
                Sampled::WithoutKey
            ]
        );
        let none = keyed(0, SampleKey::header("x-user"));
        assert_eq!(head_decide(&none, &plain), Sampled::No);
    }

    fn pattern(p: u32, count: usize) -> Vec<bool> {
        let position = AtomicU64::new(0);
        (0..count)
            .map(|_| sample(u64::from(p), &position))
            .collect()
    }

    #[test]
    fn every_window_of_100_has_exactly_p() {
        for p in 0..=100 {
            let picks = pattern(p, 400);
            for start in 0..300 {
                let n = picks[start..start + 100].iter().filter(|&&b| b).count();
                assert_eq!(n, p as usize, "p={p} window at {start}");
            }
        }
    }

    #[test]
    fn fifty_percent_is_every_other_request() {
        let picks = pattern(50, 10);
        assert_eq!(
            picks,
            [
                false, true, false, true, false, true, false, true, false, true
            ]
        );
    }

    #[test]
    fn ten_percent_is_every_tenth_request() {
        let picks = pattern(10, 30);
        let chosen: Vec<usize> = (0..30).filter(|&i| picks[i]).collect();
        assert_eq!(chosen, [9, 19, 29]);
    }

    #[test]
    fn counter_wrap_does_not_panic() {
        let position = AtomicU64::new(u64::MAX - 1);
        for _ in 0..4 {
            sample(37, &position);
        }
    }
}
