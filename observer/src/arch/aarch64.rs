//! arm64: every instruction is one 32-bit word, classified by the kernel's own masks
//! (arch/arm64/include/asm/insn.h), since what matters is what the kernel's probe decoder
//! (arch/arm64/kernel/probes/decode-insn.c) simulates.

/// Where an entry-only probe on a function is cheapest, as an offset from its start.
///
/// arm64 uprobes simulate the instructions that read the program counter (branches, `adr`,
/// `adrp`, literal loads) and single-step every other out of line, a second exception. A
/// function's start is usually stepped (`sub sp, sp, #0x40` in Debian's `av_vlog`, or a
/// `stp x29, x30` push), so the probe goes on the first simulated instruction of the
/// straight-line start, provided nothing before it may write x0-x3 (the arguments the program
/// reads, the `va_list` pointer among them) and every call passes it. `None`: the start.
pub(super) fn cheap_entry(code: &[u8]) -> Option<u64> {
    for (i, word) in code.chunks_exact(4).take(16).enumerate() {
        let insn = u32::from_le_bytes(word.try_into().ok()?);
        let offset = 4 * i as u64;
        if simulated_without_leaving(insn) {
            return Some(offset).filter(|&o| o > 0);
        }
        if changes_flow(insn) || may_write_arguments(insn) {
            return None;
        }
    }
    None
}

/// `insn & mask == value`, as the kernel's `aarch64_insn_is_*` helpers test.
const fn is(insn: u32, mask: u32, value: u32) -> bool {
    insn & mask == value
}

/// Simulated by every kernel since 4.x, and the function goes on past it (or branches
/// within): `b`, `b.cond`, `cbz`/`cbnz`, `tbz`/`tbnz`, `adr`/`adrp`, `ldr`/`ldrsw` literal.
/// A probe before the instruction runs sees the registers as the instructions before left
/// them.
fn simulated_without_leaving(insn: u32) -> bool {
    is(insn, 0xFC00_0000, 0x1400_0000) // b
        || is(insn, 0xFF00_0010, 0x5400_0000) // b.cond
        || is(insn, 0x7E00_0000, 0x3400_0000) // cbz, cbnz
        || is(insn, 0x7E00_0000, 0x3600_0000) // tbz, tbnz
        || is(insn, 0x1F00_0000, 0x1000_0000) // adr, adrp
        || is(insn, 0xBF00_0000, 0x1800_0000) // ldr (literal), 32 and 64 bits
        || is(insn, 0xFF00_0000, 0x9800_0000) // ldrsw (literal)
}

/// Calls, returns and everything else that leaves the straight line: stay at the start.
fn changes_flow(insn: u32) -> bool {
    is(insn, 0xFC00_0000, 0x9400_0000) // bl
        || is(insn, 0xFE00_0000, 0xD600_0000) // br, blr, ret and their authenticated forms
        || is(insn, 0xFF00_0000, 0xD400_0000) // svc, brk and the other exceptions
}

/// Whether `insn` may write x0-x3, conservatively: any instruction whose destination field
/// (bits 0-4) names one of them (a store naming one only reads it, and is refused all the
/// same), a load pair's second register (bits 10-14), and a writeback to a base register
/// (bits 5-9) among them.
fn may_write_arguments(insn: u32) -> bool {
    let arg = |r: u32| r <= 3;
    let rd = insn & 0x1F;
    let rn = (insn >> 5) & 0x1F;
    let rt2 = (insn >> 10) & 0x1F;
    // Loads and stores: op0 x1x0 (bits 27 and 25).
    let load_store = is(insn, 0x0A00_0000, 0x0800_0000);
    let pair = is(insn, 0x3A00_0000, 0x2800_0000);
    arg(rd) || (pair && arg(rt2)) || (load_store && arg(rn))
}

#[cfg(test)]
mod tests {
    use super::cheap_entry;

    fn code(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn probes_skip_to_the_first_simulated_instruction_while_arguments_are_intact() {
        // Debian bookworm's arm64 av_vlog (libavutil 57.28.100): sub sp, sp, #0x40;
        // adrp x5, ...; adrp x4, ...; ldr x4, [x4, #3512]; str x30, [sp, #48]; ...
        let av_vlog = code(&[
            0xd10103ff, 0xd00003e5, 0xb00003e4, 0xf946dc84, 0xf9001bfe, 0xf9400086,
        ]);
        assert_eq!(cheap_entry(&av_vlog), Some(4));
        // A function that starts with a simulated instruction is cheap at its start.
        assert_eq!(cheap_entry(&code(&[0x90000008, 0xd10103ff])), None);
        // stp x29, x30, [sp, #-32]!; mov x29, sp; cbz x0, ...: the push and the frame set-up
        // write no argument, the branch is simulated.
        assert_eq!(
            cheap_entry(&code(&[0xa9be7bfd, 0x910003fd, 0xb4000100])),
            Some(8)
        );
        // ldr x3, [x3] overwrites the fourth argument before the branch: stay at the start.
        assert_eq!(
            cheap_entry(&code(&[0xd10103ff, 0xf9400063, 0xb4000100])),
            None
        );
        // ldp x4, x1, [sp], a pair whose second register is an argument: stay.
        assert_eq!(
            cheap_entry(&code(&[0xd10103ff, 0xa94007e4, 0xb4000100])),
            None
        );
        // A call or a return before any branch: stay at the start.
        assert_eq!(cheap_entry(&code(&[0xd10103ff, 0x94000010])), None);
        assert_eq!(cheap_entry(&code(&[0xd10103ff, 0xd65f03c0])), None);
    }
}
