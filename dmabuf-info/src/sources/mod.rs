//! Answer sources, in order: kernel ioctl, driver ioctls, configuration quirks + exporter
//! table, default. Each field (cache, needs_sync, stable) is answered separately: the first
//! source with a known value wins; if none knows, the first source that explicitly said
//! "unknown" is named; otherwise the answer is the conservative default.

pub mod driver;
pub mod kernel;
pub mod table;

use crate::config::Config;
use crate::info::{Answer, CacheAttr, NeedsSync, Source};
use crate::platform::DeviceAccess;

use kernel::KernelProbe;

/// The three merged answers: cache attribute, SYNC requirement, stability.
pub type Answers = (Answer<CacheAttr>, Answer<NeedsSync>, Answer<bool>);

/// What one source said (each field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial {
    /// Cache attribute.
    pub cache: Option<Answer<CacheAttr>>,
    /// SYNC requirement.
    pub needs_sync: Option<Answer<NeedsSync>>,
    /// Stability.
    pub stable: Option<Answer<bool>>,
}

fn pick<T: Clone>(
    layers: &[Partial],
    field: impl Fn(&Partial) -> Option<&Answer<T>>,
    known: impl Fn(&T) -> bool,
    default: T,
) -> Answer<T> {
    let mut first_unknown: Option<&Answer<T>> = None;
    for layer in layers {
        if let Some(a) = field(layer) {
            if known(&a.value) {
                return a.clone();
            }
            first_unknown.get_or_insert(a);
        }
    }
    first_unknown
        .cloned()
        .unwrap_or(Answer::new(default, Source::Default))
}

/// Merges source answers, highest priority first.
pub fn merge(layers: &[Partial]) -> Answers {
    (
        pick(
            layers,
            |p| p.cache.as_ref(),
            |v| *v != CacheAttr::Unknown,
            CacheAttr::Unknown,
        ),
        pick(
            layers,
            |p| p.needs_sync.as_ref(),
            |v| *v != NeedsSync::Unknown,
            NeedsSync::Unknown,
        ),
        pick(layers, |p| p.stable.as_ref(), |_| true, false),
    )
}

/// Everything the sources say about one dma-buf, merged: the input of the guest policy.
///
/// `kernel` is what `DMA_BUF_IOCTL_INFO` did (interpreted only with the value set named by
/// `config.kernel_info_abi`), `driver` what the exporting DRM driver said ([`driver::query`]);
/// the configuration's quirk for `exporter` and the built-in table follow, with the table's
/// SYNC rule resolved for `devices`. No system call: [`crate::Inspector`] gathers `kernel` and
/// `driver` and calls this.
pub fn dma_buf_answers(
    config: &Config,
    devices: DeviceAccess,
    exporter: &str,
    kernel: KernelProbe,
    driver: Partial,
) -> Answers {
    let mut layers: Vec<Partial> = Vec::with_capacity(4);
    if let (Some(abi), KernelProbe::Answered(v)) = (config.kernel_info_abi, kernel) {
        layers.push(kernel::interpret(abi, v));
    }
    layers.push(driver);
    if let Some(q) = config.quirk_for(exporter) {
        layers.push(table::quirk_answer(q));
    }
    layers.push(table::answer(exporter, devices));
    merge(&layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::KernelAbi;

    #[test]
    fn per_field_first_known_wins() {
        let kernel = kernel::interpret(KernelAbi::V1, 0); // WC, no sync answer
        let table = Partial {
            cache: Some(Answer::new(CacheAttr::Cached, Source::ExporterTable)),
            needs_sync: Some(Answer::new(NeedsSync::No, Source::ExporterTable)),
            stable: Some(Answer::new(true, Source::ExporterTable)),
        };
        let (c, s, st) = merge(&[kernel, table]);
        assert_eq!(
            c,
            Answer::new(CacheAttr::WriteCombined, Source::KernelIoctl(KernelAbi::V1))
        );
        assert_eq!(s, Answer::new(NeedsSync::No, Source::ExporterTable));
        assert_eq!(st, Answer::new(true, Source::ExporterTable));
    }

    #[test]
    fn explicit_unknown_is_named_and_default_otherwise() {
        let drm = table::answer("drm", DeviceAccess::Coherent);
        let (c, s, st) = merge(&[Partial::default(), drm]);
        assert_eq!(c, Answer::new(CacheAttr::Unknown, Source::ExporterTable));
        assert_eq!(s, Answer::new(NeedsSync::Unknown, Source::ExporterTable));
        assert_eq!(st, Answer::new(false, Source::ExporterTable));
        let (c, s, st) = merge(&[]);
        assert_eq!(c.source, Source::Default);
        assert_eq!(s, Answer::new(NeedsSync::Unknown, Source::Default));
        assert_eq!(st, Answer::new(false, Source::Default));
    }
}
