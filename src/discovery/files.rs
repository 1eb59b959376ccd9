//! `[server] watch = true`: reload when a file the config reads changes
//! (the config, included files and new files matching an `include`
//! pattern, certificate, key, secret and CA files), through inotify
//! (`notify` crate).
//!
//! We watch the folders holding those files, not the files: editors and
//! tools that write a new file and rename it over the old one replace the
//! inode a file watch would follow. Changes are debounced ([`DEBOUNCE`]);
//! a reload that fails right after a change is tried once more after
//! another [`DEBOUNCE`] (the file may have been caught half-written), and
//! only that second failure is reported.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after a change before reloading.
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// What to watch: files by name, and `include` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    pub files: Vec<PathBuf>,
    pub patterns: Vec<PathBuf>,
}

impl WatchSet {
    /// The folders to watch: each file's, each pattern's; a folder that
    /// does not exist yet is watched through its nearest existing parent
    /// (its creation is a change).
    fn dirs(&self) -> BTreeSet<PathBuf> {
        self.wanted_dirs()
            .into_iter()
            .map(|d| {
                d.ancestors()
                    .find(|a| a.is_dir())
                    .map_or(d.clone(), Path::to_path_buf)
            })
            .collect()
    }

    fn wanted_dirs(&self) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        for f in &self.files {
            if let Some(d) = f.parent() {
                out.insert(absolute(d));
            }
        }
        for p in &self.patterns {
            // The pattern's folder, up to the first part with a wildcard.
            let mut dir = PathBuf::new();
            let parent = p.parent().unwrap_or(Path::new("/"));
            for part in parent.components() {
                if part.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
                    break;
                }
                dir.push(part);
            }
            out.insert(absolute(&dir));
        }
        out
    }

    fn matches(&self, path: &Path) -> bool {
        let path = absolute(path);
        // A folder we want (or one above it) appeared.
        self.wanted_dirs().iter().any(|d| d.starts_with(&path))
            || self.files.iter().any(|f| absolute(f) == path)
            || self.patterns.iter().any(|p| {
                glob::Pattern::new(&absolute(p).to_string_lossy())
                    .is_ok_and(|g| g.matches_path(&path))
            })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// One reload for the watcher: `quiet` asks not to report a failure.
/// Answers whether it applied, and what to watch from now on.
pub type Reload =
    Box<dyn Fn(bool) -> Pin<Box<dyn Future<Output = Option<(bool, WatchSet)>> + Send>> + Send>;

/// Starts watching `set`; runs until `reload` answers `None` (shutdown).
pub fn spawn(set: WatchSet, reload: Reload) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let _ = tx.send(ev);
        }
    })?;
    let mut watched = BTreeSet::new();
    rewatch(&mut watcher, &mut watched, &set);
    tokio::spawn(async move {
        let mut set = set;
        loop {
            // Wait for a change to one of our files.
            loop {
                let Some(ev) = rx.recv().await else { return };
                if relevant(&ev) && ev.paths.iter().any(|p| set.matches(p)) {
                    break;
                }
            }
            settle(&mut rx).await;
            let mut outcome = reload(true).await;
            if matches!(outcome, Some((false, _))) {
                // Maybe caught half-written: once more after a pause.
                settle(&mut rx).await;
                outcome = reload(false).await;
            }
            match outcome {
                None => return,
                Some((true, next)) => set = next,
                Some((false, _)) => {} // keep watching the same files
            }
            // Also picks up folders created since (an included one).
            rewatch(&mut watcher, &mut watched, &set);
        }
    });
    Ok(())
}

fn relevant(ev: &notify::Event) -> bool {
    use notify::EventKind::*;
    matches!(ev.kind, Create(_) | Modify(_) | Remove(_) | Any)
}

/// Waits until no event came for [`DEBOUNCE`], dropping what came.
async fn settle(rx: &mut mpsc::UnboundedReceiver<notify::Event>) {
    while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
}

fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    set: &WatchSet,
) {
    let want = set.dirs();
    for d in watched.difference(&want) {
        let _ = watcher.unwatch(d);
    }
    let mut now = BTreeSet::new();
    for d in want {
        if watched.contains(&d) {
            now.insert(d);
            continue;
        }
        match watcher.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                now.insert(d);
            }
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch folder for config changes")
            }
        }
    }
    *watched = now;
}
