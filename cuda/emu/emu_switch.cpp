// llamagen_emu_switch_stack for x86-64 (System V), declared in emu_runtime.cpp: pushes the
// callee-saved registers, saves the stack pointer into *save (rdi), loads `to` (rsi), pops the
// other fiber's registers and returns into it. Elsewhere, or with LLAMAGEN_EMU_UCONTEXT, the
// scheduler uses ucontext and this file is empty.
#if defined(__x86_64__) && !defined(LLAMAGEN_EMU_UCONTEXT)
asm(R"(
    .text
    .p2align 4
    .globl llamagen_emu_switch_stack
    .hidden llamagen_emu_switch_stack
    .type llamagen_emu_switch_stack, @function
llamagen_emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size llamagen_emu_switch_stack, .-llamagen_emu_switch_stack
)");
#endif
