// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `_start`: the only code that may run privileged instructions, and only when the VMM entered
//! the guest at CPL 0 (then SSE is enabled the way Linux does it; Firecracker-style boot leaves
//! CR4.OSFXSR clear). At CPL 3 those instructions are skipped. Then both 8259 PICs are masked
//! (so that a PIC wired to LINT0 can never inject an interrupt into a guest that has no IDT),
//! `.bss` is zeroed (ELF loaders copy only `p_filesz`), and `kit_main(boot_params)` runs with
//! the pointer the 64-bit boot protocol passes in `rsi`.
//!
//! A program defines `kit_main` with [`crate::kit_main!`].

core::arch::global_asm!(
    ".section .text._start,\"ax\",@progbits",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + __stack_top]",
    "    mov r12, rsi",
    "    mov ax, cs",
    "    test ax, 3",
    "    jnz 2f",
    "    cli",
    "    mov rax, cr0",
    "    and rax, ~4",
    "    or rax, 2",
    "    mov cr0, rax",
    "    mov rax, cr4",
    "    or rax, 0x600",
    "    mov cr4, rax",
    "2:",
    "    mov al, 0xff",
    "    out 0x21, al",
    "    out 0xa1, al",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __stack_bottom]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rdi, r12",
    "    call kit_main",
    "3:",
    "    pause",
    "    jmp 3b",
);

/// Defines the program's entry point: `kit_main!(run)` calls `run(boot_params_address)`.
#[macro_export]
macro_rules! kit_main {
    ($f:path) => {
        /// Entry from `_start` with the boot_params address.
        #[unsafe(no_mangle)]
        pub extern "C" fn kit_main(boot_params: u64) -> ! {
            $crate::heap::init();
            $f(boot_params)
        }
    };
}
