/*
 * memcpy & co. The prebuilt compiler_builtins for the host target lacks its "mem"
 * feature, so the kernel provides them. Written in assembly, not Rust loops, because
 * LLVM may turn such a loop back into a call to the function itself.
 */
    .section .text
    .global memcpy
memcpy:
    mov %rdi, %rax
    mov %rdx, %rcx
    rep movsb
    ret

    .global memset
memset:
    mov %rdi, %r9
    mov %esi, %eax
    mov %rdx, %rcx
    rep stosb
    mov %r9, %rax
    ret

    .global memmove
memmove:
    mov %rdi, %rax
    mov %rdx, %rcx
    cmp %rsi, %rdi
    jbe 1f
    /* Destination above source: copy backwards so overlap is safe. */
    lea -1(%rsi, %rcx), %rsi
    lea -1(%rdi, %rcx), %rdi
    std
    rep movsb
    cld
    ret
1:
    rep movsb
    ret

    .global memcmp
    .global bcmp
memcmp:
bcmp:
    xor %eax, %eax
    test %rdx, %rdx
    jz 3f
2:
    movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    sub %ecx, %eax
    jnz 3f
    inc %rdi
    inc %rsi
    dec %rdx
    jnz 2b
3:
    ret
