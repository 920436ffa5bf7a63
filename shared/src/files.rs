//! [`FileRoots`]: the directories under which kinds may read the files a task names
//! (`--file-root`), and the one way to open such a file or directory ([`FileRoots::open`]).
//!
//! A path from a task is the submitter's text, and the process reading it is a service: without
//! a bound, anyone who may publish a task reads any file the service can (issue 16). A path is
//! first resolved (`..` and symlinks followed) and must land under a configured root, which
//! gives the submitter a clear rejection naming the rule; it is then opened *through a
//! directory handle of that root* with `cap-std`, which refuses at open time any component that
//! leads outside the root. So a directory or symlink swapped in between the check and the open
//! cannot escape either (no time-of-check-to-time-of-use gap).

use std::{
    io,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use cap_std::{ambient_authority, fs::Dir};

use crate::text;

/// The directories kinds may read under; empty (the default) refuses every path.
#[derive(Clone, Debug, Default)]
pub struct FileRoots {
    roots: Arc<Vec<Root>>,
}

/// One root: its canonical path, and a handle every file under it is opened through.
#[derive(Debug)]
struct Root {
    path: PathBuf,
    dir: Dir,
}

/// What a path under a root is.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, open for reading.
    File(cap_std::fs::File),
    /// A directory: list it and open its entries through this handle, which keeps them under
    /// it too.
    Dir(Dir),
    /// Anything else (a socket, a device, a FIFO): not opened, so that nothing blocks on it.
    Other,
}

/// Why a path may not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileAccessError {
    /// No root is configured: the service reads no file a task names.
    #[error("path {path} is refused: this service has no file roots (--file-root), so it reads no file a task names")]
    NoRoots {
        /// The path as given, quoted and bounded ([`text::quoted`]).
        path: String,
    },
    /// The path, once `..` and symlinks are resolved, is not under any root.
    #[error("path {path} is outside the allowed file roots")]
    Outside {
        /// The path as given, quoted and bounded.
        path: String,
    },
    /// The path names a `..` component: refused before anything is looked up, so whether a
    /// directory outside the roots exists cannot be probed through `<outside>/../<root>`.
    #[error("path {path} is refused: it must not contain `..` components")]
    ParentComponent {
        /// The path as given, quoted and bounded.
        path: String,
    },
    /// The path reaches, under its root, a hidden file or directory (a name starting with
    /// `.`): `.git`, a broker's `.erlang.cookie`, a state directory like `.chorus`. Directory
    /// walks skip those already; naming one directly is refused the same way.
    #[error("path {path} is refused: hidden files and directories (names starting with `.`) are not read")]
    Hidden {
        /// The path as given, quoted and bounded.
        path: String,
    },
    /// The path is under a root, but reading it failed (it does not exist, say).
    #[error("path {path}: {source}")]
    Io {
        /// The path as given, quoted and bounded.
        path: String,
        /// What the system said.
        source: io::Error,
    },
}

/// Why a configured root cannot be used, at start-up.
#[derive(Debug, thiserror::Error)]
#[error("--file-root {path}: {source}")]
pub struct RootError {
    /// The root as configured.
    pub path: String,
    /// What the system said (it does not exist, it is not a directory...).
    pub source: io::Error,
}

impl FileRoots {
    /// No roots: every path is refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// Opens each of `dirs` as a root (resolved to its canonical path, so a root given through a
    /// symlink works too). The directories are held open for the process's life.
    ///
    /// # Errors
    /// The first directory that does not exist, is not a directory or cannot be opened.
    pub fn new<P: AsRef<Path>>(dirs: &[P]) -> Result<Self, RootError> {
        let mut roots = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let dir = dir.as_ref();
            let failed = |source| RootError {
                path: dir.display().to_string(),
                source,
            };
            let path = std::fs::canonicalize(dir).map_err(failed)?;
            let handle = Dir::open_ambient_dir(&path, ambient_authority()).map_err(failed)?;
            roots.push(Root { path, dir: handle });
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    /// Whether no root is configured.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The roots' canonical paths, for the start-up log line.
    pub fn paths(&self) -> Vec<&Path> {
        self.roots.iter().map(|root| root.path.as_path()).collect()
    }

    /// Opens `path` (absolute, or relative to the working directory) if it is under a root.
    /// Symlinks are followed, but the file reached must be under a root too.
    ///
    /// # Errors
    /// [`FileAccessError::NoRoots`] with no root configured; [`FileAccessError::Outside`] for a
    /// path that is, or leads, outside every root (through `..` or a symlink), whether or not
    /// it exists, so the error tells nothing about files outside;
    /// [`FileAccessError::ParentComponent`] for a path with a `..` component and
    /// [`FileAccessError::Hidden`] for one that reaches a hidden name under its root;
    /// [`FileAccessError::Io`] for
    /// a path under a root that cannot be read.
    pub fn open(&self, path: &Path) -> Result<Opened, FileAccessError> {
        let shown = || text::quoted(&path.to_string_lossy());
        if self.is_empty() {
            return Err(FileAccessError::NoRoots { path: shown() });
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(FileAccessError::ParentComponent { path: shown() });
        }
        let (root, relative) = self.locate(path).map_err(|error| match error {
            Located::Outside => FileAccessError::Outside { path: shown() },
            Located::Io(source) => FileAccessError::Io {
                path: shown(),
                source,
            },
        })?;
        let io = |source| FileAccessError::Io {
            path: shown(),
            source,
        };
        let hidden = relative.components().any(|component| {
            matches!(component, Component::Normal(name) if name.as_encoded_bytes().starts_with(b"."))
        });
        if hidden {
            return Err(FileAccessError::Hidden { path: shown() });
        }
        if relative.as_os_str().is_empty() {
            return root.dir.try_clone().map(Opened::Dir).map_err(io);
        }
        // Through the root's handle: cap-std refuses a component that leads outside it now,
        // even if the tree changed since `locate` looked.
        let metadata = root.dir.metadata(&relative).map_err(io)?;
        if metadata.is_dir() {
            root.dir.open_dir(&relative).map(Opened::Dir).map_err(io)
        } else if metadata.is_file() {
            root.dir.open(&relative).map(Opened::File).map_err(io)
        } else {
            Ok(Opened::Other)
        }
    }

    /// The root `path` resolves under, and the path relative to it.
    fn locate(&self, path: &Path) -> Result<(&Root, PathBuf), Located> {
        let canonical = match std::fs::canonicalize(path) {
            Ok(canonical) => canonical,
            // A path that cannot be resolved (it does not exist, say) is judged by the
            // deepest ancestor that can: under a root, the submitter gets the system's error;
            // anywhere else, the path is outside (so nothing is told about files outside).
            Err(error) => {
                let absolute = absolute(path).ok_or(Located::Outside)?;
                let under_root = absolute
                    .ancestors()
                    .find_map(|ancestor| std::fs::canonicalize(ancestor).ok())
                    .is_some_and(|ancestor| {
                        self.roots
                            .iter()
                            .any(|root| ancestor.starts_with(&root.path))
                    });
                return Err(if under_root {
                    Located::Io(error)
                } else {
                    Located::Outside
                });
            }
        };
        self.roots
            .iter()
            .find_map(|root| {
                let relative = canonical.strip_prefix(&root.path).ok()?;
                Some((root, relative.to_path_buf()))
            })
            .ok_or(Located::Outside)
    }
}

/// Why [`FileRoots::locate`] found no root.
enum Located {
    Outside,
    Io(io::Error),
}

/// `path` made absolute against the working directory (`None` when that is unknown).
fn absolute(path: &Path) -> Option<PathBuf> {
    if path.is_absolute() {
        Some(path.to_path_buf())
    } else {
        Some(std::env::current_dir().ok()?.join(path))
    }
}

#[cfg(test)]
mod tests;
