/*
 * Trap entry stubs for all 256 vectors, 16 bytes apart starting at isr_stubs (the IDT
 * computes each gate's address as isr_stubs + 16 * vector). Each stub makes the stack
 * uniform (a dummy error code where the CPU pushes none, then the vector number) and
 * jumps to isr_common, which saves every general-purpose register as a TrapFrame and
 * calls sluice_trap_entry(frame).
 */
    .section .text
    .macro STUB_NOERR v
    .balign 16
    push $0
    push $\v
    jmp isr_common
    .endm

    .macro STUB_ERR v
    .balign 16
    push $\v
    jmp isr_common
    .endm

    .balign 16
    .global isr_stubs
isr_stubs:
    STUB_NOERR 0
    STUB_NOERR 1
    STUB_NOERR 2
    STUB_NOERR 3
    STUB_NOERR 4
    STUB_NOERR 5
    STUB_NOERR 6
    STUB_NOERR 7
    STUB_ERR   8
    STUB_NOERR 9
    STUB_ERR   10
    STUB_ERR   11
    STUB_ERR   12
    STUB_ERR   13
    STUB_ERR   14
    STUB_NOERR 15
    STUB_NOERR 16
    STUB_ERR   17
    STUB_NOERR 18
    STUB_NOERR 19
    STUB_NOERR 20
    STUB_ERR   21
    STUB_NOERR 22
    STUB_NOERR 23
    STUB_NOERR 24
    STUB_NOERR 25
    STUB_NOERR 26
    STUB_NOERR 27
    STUB_NOERR 28
    STUB_ERR   29
    STUB_ERR   30
    STUB_NOERR 31
    vector = 32
    .rept 224
    STUB_NOERR vector
    vector = vector + 1
    .endr
    .balign 16
    .global isr_stubs_end
isr_stubs_end:

isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    /* 22 quadwords on a 16-byte aligned IST stack: RSP is aligned for the call. */
    mov %rsp, %rdi
    cld
    call sluice_trap_entry
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
