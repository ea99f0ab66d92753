//! Images: the local image store (name → manifest), committing a snapshot chain and a
//! config as an image, exporters (docker-archive, OCI layout, local directory, tarball)
//! and loading docker-archive and OCI-layout tarballs.
//!
//! Architecture invariant: depends on `snapshotter` for blobs and snapshots and on the
//! pure `imagespec` types; knows nothing of Dockerfiles, LLB or the solver.
//!
//! ```no_run
//! let store = rdock_snapshotter::Store::open("/var/lib/rdock".as_ref()).unwrap();
//! let images = rdock_oci::ImageStore::new(store);
//! for img in images.list().unwrap() {
//!     println!("{} {}", img.name, img.manifest);
//! }
//! ```

pub mod analysis;
mod archive;
mod atomic;
mod compare;
mod convert;
mod distribution;
mod epoch;
mod error;
mod fetch;
mod filesystem;
mod image;
mod load;
mod store;

pub use archive::{ArchiveFormat, export_archive, export_layout_dir, make_index};
pub use compare::{ImageDiff, LayerDiff, compare_images};
pub use convert::{BuiltOn, ExportForm, RewriteTimestamp, convert_manifest};
pub use distribution::{PushReport, Resolved, pull, push, push_artifact, push_blobs, read_layout, resolve_remote, write_layout};
pub use error::OciError;
pub use fetch::{
    BlobSource, LayoutSource, OnTransfer, OriginSource, RegistrySource, Transfer, fetch_unpacked_image, fetch_unpacking, parallel,
    parallel_map, quiet,
};
pub use filesystem::{export_local, export_tar};
pub use image::{ChainBlob, CommittedImage, chain_snapshot_name, commit_image, ensure_unpacked, unpack_chain};
pub use load::{LayoutPick, load_archive, load_layout_image, load_stream};
pub use store::{ImageRecord, ImageStore, Referenced};
