//! x86-64: instructions decoded with iced-x86.

/// Where an entry-only probe on a function is cheapest, as an offset from its start.
///
/// x86 uprobes emulate a few instructions (pushes and direct branches) and single-step the
/// rest out of line, which costs a second trap: `av_vlog` starts with `sub $0x18,%rsp`, and
/// a probe there costs four times one on a `push`. So the probe goes on the first emulated
/// instruction of the function's straight-line start, provided nothing before it writes the
/// argument registers the program reads (rdi, rsi, rdx, and rcx: the `va_list` of a message
/// sent as a structured event) and every call passes it. `None`:
/// the start itself.
pub(super) fn cheap_entry(code: &[u8], address: u64) -> Option<u64> {
    use iced_x86::{
        Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register,
    };
    let mut decoder = Decoder::with_ip(
        64,
        &code[..code.len().min(64)],
        address,
        DecoderOptions::NONE,
    );
    let mut info = InstructionInfoFactory::new();
    let args = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    for insn in decoder.iter().take(16) {
        if insn.is_invalid() {
            return None;
        }
        let push = matches!(insn.code(), Code::Push_r64);
        let branch = matches!(
            insn.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
        ) && insn.is_jcc_short_or_near() | insn.is_jmp_short_or_near();
        if push || branch {
            return Some(insn.ip() - address).filter(|&o| o > 0);
        }
        if insn.flow_control() != FlowControl::Next {
            return None;
        }
        let writes_args = info.info(&insn).used_registers().iter().any(|u| {
            args.contains(&u.register().full_register())
                && !matches!(
                    u.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess
                )
        });
        if writes_args {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::cheap_entry;

    #[test]
    fn probes_skip_to_the_first_emulated_instruction_while_arguments_are_intact() {
        // Debian's av_vlog: sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,0x8(%rsp);
        // mov 0x8b487(%rip),%rax; test %rdi,%rdi; je +0x2a
        let code = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48,
            0x89, 0x44, 0x24, 0x08, 0x48, 0x8b, 0x05, 0x87, 0xb4, 0x08, 0x00, 0x48, 0x85, 0xff,
            0x74, 0x2a,
        ];
        assert_eq!(cheap_entry(&code, 0x55b80), Some(28));
        // A function that starts with a push is cheap at its start.
        assert_eq!(cheap_entry(&[0x41, 0x55, 0x41, 0x54], 0x1000), None);
        // mov (%rdi),%rdx overwrites the third argument before the branch: stay at the start.
        let clobber = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x8b, 0x17, 0x48, 0x85, 0xd2, 0x74, 0x10,
        ];
        assert_eq!(cheap_entry(&clobber, 0x2000), None);
        // A return before any branch: stay at the start.
        assert_eq!(cheap_entry(&[0x48, 0x83, 0xec, 0x18, 0xc3], 0x3000), None);
    }
}
