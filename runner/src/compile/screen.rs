//! A look at a module's code before it is compiled, to refuse shapes known to make Cranelift
//! take minutes or gigabytes on a small input, before a compile worker is spent on them.
//!
//! The shape measured is a function's locals times its control blocks: Cranelift builds SSA
//! form with one variable per local, and a local that is live across a block join becomes a
//! block parameter, so the work and memory of building and allocating registers for a
//! function grow with the product. Measured on the 2-core development machine, for functions
//! where every local is live across every if/else join (`tests/support/wasm.rs`, `diamonds`;
//! an if/else is two blocks): 300 locals x 10 000 blocks (3 M) compile in 1.9 s; 7.2 M in 5.0 s
//! and 1.3 GB; 10 M in 8 s and 1.6 GB; 14.4 M in 10.7 s and 2.5 GB; 19.6 M and 40 M (1 000 x
//! 40 000, a 400 KB module) exhaust the worker's 4 GiB after 5-9 s. Real toolchain output stays
//! far below the bound: the worst function of the Python component (an 18 MB CPython build)
//! is 271 x 249, of the Rust examples 25 x 239. A function past the bound that would compile quickly anyway
//! (few of its locals live across joins) is refused too: the message says how to avoid it.

use wasmparser::{Operator, Parser, Payload};

/// The largest locals-times-blocks product a function may have.
pub const MAX_LOCALS_TIMES_BLOCKS: u64 = 8_000_000;

/// The worst function of a module: its position among all function bodies, its locals and
/// its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Worst {
    /// Position of the body among all bodies of the binary (nested modules included).
    pub body: u64,
    /// Locals (parameters not counted).
    pub locals: u64,
    /// `block`, `loop`, `if` and `else` instructions.
    pub blocks: u64,
}

impl Worst {
    /// The product the bound applies to.
    pub fn cost(&self) -> u64 {
        self.locals.saturating_mul(self.blocks)
    }
}

/// The function of `bytes` (a module or a component, nested modules included) with the
/// highest locals-times-blocks product; None when the binary does not parse (validation
/// reports that precisely elsewhere).
pub fn worst_function(bytes: &[u8]) -> Option<Worst> {
    let mut worst = Worst::default();
    let mut position = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::CodeSectionEntry(body) = payload.ok()? else {
            continue;
        };
        position += 1;
        let mut locals = 0u64;
        for local in body.get_locals_reader().ok()? {
            locals = locals.saturating_add(u64::from(local.ok()?.0));
        }
        let mut blocks = 0u64;
        let mut ops = body.get_operators_reader().ok()?;
        while !ops.eof() {
            if matches!(
                ops.read().ok()?,
                Operator::Block { .. }
                    | Operator::Loop { .. }
                    | Operator::If { .. }
                    | Operator::Else
            ) {
                blocks += 1;
            }
        }
        let here = Worst {
            body: position - 1,
            locals,
            blocks,
        };
        if here.cost() > worst.cost() {
            worst = here;
        }
    }
    Some(worst)
}

/// Refuses a binary whose worst function is past [`MAX_LOCALS_TIMES_BLOCKS`].
pub fn check(bytes: &[u8]) -> Result<(), crate::error::CompileError> {
    match worst_function(bytes) {
        Some(w) if w.cost() > MAX_LOCALS_TIMES_BLOCKS => {
            Err(crate::error::CompileError::TooComplex(format!(
                "function body {} has {} locals and {} blocks; their product {} is past the \
                 bound of {MAX_LOCALS_TIMES_BLOCKS}, beyond which compiling takes gigabytes \
                 and seconds (split the function or build with optimisation)",
                w.body,
                w.locals,
                w.blocks,
                w.cost()
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_toolchain_output_is_far_below_the_bound() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/dist");
        let Ok(entries) = std::fs::read_dir(&dist) else {
            return;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            let w = worst_function(&bytes).unwrap();
            println!("{}: {w:?} cost {}", e.path().display(), w.cost());
            assert!(
                w.cost() * 4 < MAX_LOCALS_TIMES_BLOCKS,
                "{}",
                e.path().display()
            );
        }
    }
}
