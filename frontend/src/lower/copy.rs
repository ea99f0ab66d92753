//! COPY and ADD: sources sorted by kind (context or stage paths, URLs, git repositories,
//! heredocs), each kind becoming a copy action from a state of its own, all in one file op.

use super::{Ctx, StageRun, expand_error, history, parse_chown, relative_to};
use crate::error::DockerfileError;
use crate::instructions::{CopyArgs, Located};
use crate::lower::FrontendError;
use crate::parser::{Heredoc, heredoc_word};
use rdock_llb::{Chmod, CopyAction, FileAction, FileOp, Input, Op, OpMetadata, SourceOp};

/// A COPY's or ADD's sources, by kind, expanded.
#[derive(Default)]
struct Sources<'a> {
    paths: Vec<String>,
    heredocs: Vec<&'a Heredoc>,
    urls: Vec<String>,
    gits: Vec<String>,
}

impl Sources<'_> {
    fn len(&self) -> usize {
        self.paths.len() + self.heredocs.len() + self.urls.len() + self.gits.len()
    }
}

/// What every copy action of the instruction shares.
struct CopyOpts {
    dest: String,
    chown: Option<String>,
    chmod: Option<Chmod>,
    exclude: Vec<String>,
}

/// The file op being assembled: copy actions, and the states they copy from.
struct Assembly {
    /// Inputs the op has before these (its base).
    base_inputs: usize,
    extra: Vec<Input>,
    actions: Vec<FileAction>,
}

impl Assembly {
    /// Adds a copy from `state`; `action` is completed with the input's index.
    fn copy_from(&mut self, state: Input, mut action: CopyAction) {
        self.extra.push(state);
        action.src_input = (self.base_inputs + self.extra.len() - 1) as u32;
        self.actions.push(FileAction::Copy(action));
    }
}

/// A copy action with the instruction's shared options and nothing special.
fn action(opts: &CopyOpts, src: Vec<String>, dest: String) -> CopyAction {
    CopyAction {
        src_input: 0,
        src,
        dest,
        chown: opts.chown.as_deref().map(parse_chown),
        chmod: opts.chmod.clone(),
        allow_wildcard: false,
        allow_empty_wildcard: false,
        unpack_archives: false,
        exclude: Vec::new(),
        parents: false,
    }
}

/// A context or stage path as the copy names it: absolute, and with `--parents` its
/// `/./` pivot kept (what precedes it is not recreated).
fn source_path(s: &str, parents: bool) -> String {
    let abs = |p: &str| {
        let c = rdock_llb::patterns::clean_path(p);
        if c == "." { "/".to_string() } else { format!("/{c}") }
    };
    match s.split_once("/./") {
        Some((before, after)) if parents => format!("{}/./{}", abs(before).trim_end_matches('/'), abs(after).trim_start_matches('/')),
        _ => abs(s),
    }
}

impl Ctx<'_> {
    pub(super) fn dispatch_copy(&mut self, run: &mut StageRun, l: &Located, args: &CopyArgs, is_add: bool) -> Result<(), FrontendError> {
        let what = if is_add { "ADD" } else { "COPY" };
        let sources = self.copy_sources(run, l, args, is_add)?;
        let dest_word = self.expand(run, l, &args.dest)?;
        if sources.len() > 1 && !dest_word.ends_with('/') {
            return Err(DockerfileError::new(
                l.location.at(&args.dest),
                format!("When using {what} with more than one source file, the destination must be a directory and end with a /"),
            )
            .expected(format!("{}/", args.dest))
            .into());
        }
        let opts = self.copy_opts(run, l, args, &dest_word)?;
        let mut op = Assembly { base_inputs: usize::from(run.state.is_some()), extra: Vec::new(), actions: Vec::new() };
        if !sources.paths.is_empty() {
            let state = self.copy_from_state(run, l, args, what)?;
            let src = sources.paths.iter().map(|s| source_path(s, args.parents)).collect();
            let unpack = is_add && args.unpack != Some(false);
            let a = CopyAction {
                allow_wildcard: true,
                unpack_archives: unpack,
                exclude: opts.exclude.clone(),
                parents: args.parents,
                ..action(&opts, src, opts.dest.clone())
            };
            op.copy_from(state, a);
        }
        self.copy_urls(l, args, &sources.urls, &opts, &mut op)?;
        for g in &sources.gits {
            // The checked-out tree's contents go into the destination directory.
            let src = self.builder.add(
                Op::Source(SourceOp::git(g, args.keep_git_dir)),
                vec![],
                OpMetadata { description: format!("[internal] load git source {g}"), ..Default::default() },
            );
            let dest = format!("{}/", opts.dest.trim_end_matches('/'));
            op.copy_from(src, CopyAction { exclude: opts.exclude.clone(), ..action(&opts, vec!["/".to_string()], dest) });
        }
        for doc in &sources.heredocs {
            let file = self.heredoc_file(run, l, doc)?;
            op.copy_from(file, action(&opts, vec![format!("/{}", doc.name)], opts.dest.clone()));
        }
        let msg = copy_history(what, &opts, args, &sources, &dest_word);
        let from = match &args.from {
            Some(f) => Some(self.source_label(run.idx, f)),
            None => None,
        };
        self.file_op(run, l, op.actions, op.extra, from)?;
        history(&mut run.image, msg, true);
        Ok(())
    }

    /// Sorts the sources: heredocs named in the instruction, git repositories (ADD),
    /// URLs (ADD only), and paths.
    fn copy_sources<'a>(&self, run: &StageRun, l: &Located, args: &'a CopyArgs, is_add: bool) -> Result<Sources<'a>, FrontendError> {
        let mut out = Sources::default();
        for s in &args.srcs {
            if let Some((name, _, _)) = heredoc_word(s)
                && let Some(doc) = args.heredocs.iter().find(|d| d.name == name)
            {
                out.heredocs.push(doc);
                continue;
            }
            let e = self.expand(run, l, s)?;
            if is_add && rdock_llb::parse_git_ref(&e).is_some() {
                out.gits.push(e);
            } else if e.starts_with("http://") || e.starts_with("https://") {
                if !is_add {
                    return Err(DockerfileError::new(l.location.at(s), "source can't be a URL for COPY")
                        .expected("ADD for URLs, or a path in the build context")
                        .into());
                }
                out.urls.push(e);
            } else {
                out.paths.push(e);
            }
        }
        Ok(out)
    }

    fn copy_opts(&self, run: &StageRun, l: &Located, args: &CopyArgs, dest_word: &str) -> Result<CopyOpts, FrontendError> {
        let chown = args.chown.as_ref().map(|c| self.expand(run, l, c)).transpose()?;
        let chmod = match &args.chmod {
            None => None,
            Some(m) => {
                let m = self.expand(run, l, m)?;
                Some(Chmod::parse(&m).map_err(|e| {
                    DockerfileError::new(l.location.at("--chmod"), e.to_string()).expected("an octal mode such as 0755, or u=rwx,go=rx")
                })?)
            }
        };
        let exclude = args.exclude.iter().map(|e| self.expand(run, l, e)).collect::<Result<Vec<_>, _>>()?;
        Ok(CopyOpts { dest: relative_to(&run.workdir, dest_word), chown, chmod, exclude })
    }

    /// What `--from=FROM` names, for errors: `stage NAME`, `context NAME`, `image REF`.
    fn source_label(&self, idx: usize, from: &str) -> String {
        if self.stage_by_name(from, idx).is_some() || from.parse::<usize>().is_ok_and(|i| i < idx) {
            format!("stage {from}")
        } else if self.opts.named_context(from).is_some() {
            format!("context {from}")
        } else {
            format!("image {from}")
        }
    }

    /// Where paths are copied from: the build context, an earlier stage, or an image.
    fn copy_from_state(&mut self, run: &StageRun, l: &Located, args: &CopyArgs, what: &str) -> Result<Input, FrontendError> {
        let state = match &args.from {
            None => Some(self.context_source()),
            Some(from) => {
                // BuildKit expands nothing in --from, and says so rather than copying from
                // an image named `$VAR` (its toCommand).
                let empty: Vec<(String, String)> = Vec::new();
                if self.lexer.process_word(from, &empty).ok().as_deref() != Some(from.as_str()) {
                    return Err(DockerfileError::new(
                        l.location.at(from),
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                    )
                    .expected("a stage name, a stage index or an image name, as written")
                    .into());
                }
                let from = from.clone();
                match self.stage_by_name(&from, run.idx).or_else(|| from.parse::<usize>().ok().filter(|i| *i < run.idx)) {
                    Some(s) => self.lower_stage(s)?.state,
                    None => {
                        if let Some(r) = self.named_context_state(&from, &l.location, &run.platform.clone())? {
                            return r.state.ok_or_else(|| {
                                DockerfileError::new(l.location.clone(), format!("{what} --from refers to an empty stage")).into()
                            });
                        }
                        let later_stage = self.stages.iter().any(|s| s.name.as_deref() == Some(from.to_ascii_lowercase().as_str()));
                        if later_stage || from.parse::<usize>().is_ok() {
                            return Err(DockerfileError::new(
                                l.location.at(&from),
                                format!("{what} --from={from} refers to a stage that is not defined before this one"),
                            )
                            .expected("the name or index of an earlier stage")
                            .into());
                        }
                        Some(self.image_source(&from, &l.location, &run.platform.clone())?.0)
                    }
                }
            }
        };
        // Copying from an empty (scratch) stage: nothing to copy, as BuildKit fails.
        state.ok_or_else(|| DockerfileError::new(l.location.clone(), format!("{what} --from refers to an empty stage")).into())
    }

    /// URL sources: each download is a source op (fetched and keyed by content by the
    /// solver) holding one file, copied like a file.
    fn copy_urls(
        &mut self,
        l: &Located,
        args: &CopyArgs,
        urls: &[String],
        opts: &CopyOpts,
        op: &mut Assembly,
    ) -> Result<(), FrontendError> {
        let checksum = match &args.checksum {
            Some(_) if urls.is_empty() => {
                return Err(DockerfileError::new(l.location.at("--checksum"), "--checksum applies to URL sources only")
                    .expected("ADD --checksum=sha256:… https://…")
                    .into());
            }
            c => c.clone(),
        };
        for url in urls {
            let source = SourceOp::http(url, checksum.as_deref());
            let filename = source.attr("http.filename").unwrap_or_default().to_string();
            let description = format!("[internal] load remote file {url}");
            let src = self.builder.add(Op::Source(source), vec![], OpMetadata { description, ..Default::default() });
            let a =
                CopyAction { unpack_archives: args.unpack == Some(true), ..action(opts, vec![format!("/{filename}")], opts.dest.clone()) };
            op.copy_from(src, a);
        }
        Ok(())
    }

    /// A heredoc source as a one-file scratch state.
    fn heredoc_file(&mut self, run: &StageRun, l: &Located, doc: &Heredoc) -> Result<Input, FrontendError> {
        let mut data = doc.data();
        if doc.expand {
            data = self.lexer.process_heredoc(&data, &run.env).map_err(|e| expand_error(l, e))?;
        }
        Ok(self.builder.add(
            Op::File(FileOp {
                base: None,
                actions: vec![FileAction::Mkfile { path: format!("/{}", doc.name), mode: 0o644, data: data.into_bytes(), chown: None }],
            }),
            vec![],
            OpMetadata { description: "[internal] preparing inline document".into(), ..Default::default() },
        ))
    }
}

/// The history entry, as BuildKit words it.
fn copy_history(what: &str, opts: &CopyOpts, args: &CopyArgs, sources: &Sources<'_>, dest_word: &str) -> String {
    let mut msg = String::from(what);
    if let Some(c) = &opts.chown {
        msg.push_str(&format!(" --chown={c}"));
    }
    if let Some(c) = &args.chmod {
        msg.push_str(&format!(" --chmod={c}"));
    }
    for s in sources.paths.iter().chain(&sources.urls).chain(&sources.gits) {
        msg.push_str(&format!(" {s}"));
    }
    for doc in &sources.heredocs {
        msg.push_str(&format!(" <<{}", doc.name));
    }
    msg.push_str(&format!(" {dest_word}"));
    msg
}
