//! Size limits every graph is checked against before anything is allocated for it
//! ([`crate::Graph::validate`], [`crate::ModelIr::check`]), so an absurd size in a flag or
//! a crafted artifact is an error naming the node, never an allocation that aborts the
//! process. Each limit is far above the models decomp is for (ResNet-1202 on 64x64 Tiny
//! ImageNet images: 19.4 M parameters, 262,144 values in its largest node, about 160 M
//! values over all nodes) and small enough that one image's worth fits in memory.

/// Largest height or width of any feature map, and largest kernel, stride or padding of a
/// convolution or pooling window: 4,096.
pub const MAX_SPATIAL: usize = 4096;

/// Largest number of values one node holds for one image (the zero-padded input of a
/// convolution or pooling window included): 2^26, 256 MiB of `f32`.
pub const MAX_NODE_VALUES: usize = 1 << 26;

/// Largest number of values all nodes together hold for one image: 2^28, 1 GiB of `f32`.
pub const MAX_GRAPH_VALUES: usize = 1 << 28;

/// Largest number of stored values (learned parameters, BatchNorm statistics and
/// constants) of a graph: 2^28, 1 GiB of `f32`.
pub const MAX_PARAMS: usize = 1 << 28;

/// Largest number of classes of a classifier: 100,000 (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 100_000;
