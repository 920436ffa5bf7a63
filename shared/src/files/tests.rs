//! Unit tests of path confinement, on a real directory tree made per test.
#![allow(clippy::unwrap_used)]

use std::{io::Read, os::unix::fs::symlink};

use super::*;

/// A fresh tree: `root/inside.txt`, `root/sub/deep.txt`, `outside/secret.txt`, and symlinks in
/// the root to the secret file, to the outside directory and to a file inside. Removed when
/// dropped.
struct Tree {
    base: PathBuf,
    root: PathBuf,
}

impl Drop for Tree {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.base));
    }
}

fn tree() -> Tree {
    let base = std::env::temp_dir().join(format!("chorus-files-{}", uuid::Uuid::new_v4()));
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(root.join("inside.txt"), "inside words").unwrap();
    std::fs::write(root.join("sub/deep.txt"), "deep words").unwrap();
    std::fs::write(base.join("outside/secret.txt"), "secret words").unwrap();
    symlink(base.join("outside/secret.txt"), root.join("to-secret")).unwrap();
    symlink(base.join("outside"), root.join("to-outside")).unwrap();
    symlink(root.join("inside.txt"), root.join("to-inside")).unwrap();
    Tree { base, root }
}

fn read(opened: Opened) -> String {
    let Opened::File(mut file) = opened else {
        panic!("not a file: {opened:?}");
    };
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn without_roots_every_path_is_refused() {
    let tree = tree();
    let root = &tree.root;
    let error = FileRoots::none()
        .open(&root.join("inside.txt"))
        .unwrap_err();
    assert!(matches!(error, FileAccessError::NoRoots { .. }), "{error}");
    assert!(error.to_string().contains("no file roots"), "{error}");
}

#[test]
fn files_under_a_root_open() {
    let tree = tree();
    let root = &tree.root;
    let roots = FileRoots::new(&[root]).unwrap();
    assert_eq!(
        read(roots.open(&root.join("inside.txt")).unwrap()),
        "inside words"
    );
    assert_eq!(
        read(roots.open(&root.join("sub/deep.txt")).unwrap()),
        "deep words"
    );
    // A symlink whose target is under the root is fine.
    assert_eq!(
        read(roots.open(&root.join("to-inside")).unwrap()),
        "inside words"
    );
    assert!(matches!(roots.open(root).unwrap(), Opened::Dir(_)));
    assert!(matches!(
        roots.open(&root.join("sub")).unwrap(),
        Opened::Dir(_)
    ));
}

#[test]
fn paths_outside_the_roots_are_refused_by_rule() {
    let tree = tree();
    let (base, root) = (&tree.base, &tree.root);
    let roots = FileRoots::new(&[root]).unwrap();
    let outside = [
        PathBuf::from("/etc/passwd"),
        base.join("outside/secret.txt"),
        root.join("to-secret"),
        root.join("to-outside/secret.txt"),
        root.join("to-outside"),
        // Not there, but outside: the same answer as for a file that is there.
        PathBuf::from("/etc/no-such-file"),
        root.join("to-outside/no-such-file"),
    ];
    for path in outside {
        let error = roots.open(&path).unwrap_err();
        assert!(
            matches!(error, FileAccessError::Outside { .. }),
            "{}: {error}",
            path.display()
        );
        let message = error.to_string();
        assert!(
            message.contains("outside the allowed file roots"),
            "{message}"
        );
        assert!(!message.contains("secret words"), "{message}");
    }
}

#[test]
fn a_missing_file_under_a_root_gets_the_system_error() {
    let tree = tree();
    let root = &tree.root;
    let roots = FileRoots::new(&[root]).unwrap();
    let error = roots.open(&root.join("sub/missing.txt")).unwrap_err();
    assert!(matches!(error, FileAccessError::Io { .. }), "{error}");
}

#[test]
fn a_root_that_is_not_a_directory_is_refused_at_start() {
    let tree = tree();
    let (base, root) = (&tree.base, &tree.root);
    assert!(FileRoots::new(&[root.join("inside.txt")]).is_err());
    assert!(FileRoots::new(&[base.join("nowhere")]).is_err());
    // Several roots: a path under any of them opens.
    let roots = FileRoots::new(&[root.join("sub"), base.join("outside")]).unwrap();
    assert_eq!(
        read(roots.open(&base.join("outside/secret.txt")).unwrap()),
        "secret words"
    );
    assert!(roots.open(&root.join("inside.txt")).is_err());
}

#[test]
fn paths_with_parent_components_are_refused_before_any_lookup() {
    let tree = tree();
    let (base, root) = (&tree.base, &tree.root);
    let roots = FileRoots::new(&[root]).unwrap();
    let root_name = root.file_name().unwrap().to_str().unwrap();
    let refused = [
        root.join("../outside/secret.txt"),
        root.join("../.."),
        // Resolves inside, but `..` is refused whatever it leads to...
        root.join("sub/../sub/deep.txt"),
        // ...so a directory outside cannot be probed by going through it: both answers match.
        base.join(format!("outside/../{root_name}/inside.txt")),
        base.join(format!("no-such-dir/../{root_name}/inside.txt")),
    ];
    for path in refused {
        let error = roots.open(&path).unwrap_err();
        assert!(
            matches!(error, FileAccessError::ParentComponent { .. }),
            "{}: {error}",
            path.display()
        );
        assert!(
            error.to_string().contains("must not contain `..`"),
            "{error}"
        );
    }
}

#[test]
fn hidden_names_under_a_root_are_refused() {
    let tree = tree();
    let root = &tree.root;
    std::fs::create_dir_all(root.join(".state")).unwrap();
    std::fs::write(root.join(".state/.cookie"), "cookiesecret").unwrap();
    std::fs::write(root.join(".env"), "envsecret").unwrap();
    symlink(root.join(".state"), root.join("state-link")).unwrap();
    let roots = FileRoots::new(&[root]).unwrap();
    for name in [
        ".env",
        ".state",
        ".state/.cookie",
        "state-link/.cookie",
        "state-link",
    ] {
        let error = roots.open(&root.join(name)).unwrap_err();
        assert!(
            matches!(error, FileAccessError::Hidden { .. }),
            "{name}: {error}"
        );
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
