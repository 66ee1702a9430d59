/*
 * PVH entry for the Sluice kernel (AT&T syntax, assembled by rustc's global_asm!).
 *
 * QEMU (through SeaBIOS's PVH option ROM) jumps to pvh_start32 in 32-bit protected mode
 * with paging off and %ebx = physical address of struct hvm_start_info. We:
 *   1. zero .bss (page tables and stacks live there),
 *   2. identity-map the first 4 GiB with 2 MiB pages (write-back; Rust later marks every
 *      2 MiB page that holds no RAM as uncached, see kernel paging code),
 *   3. turn on SSE (the prebuilt `core` uses it), PAE, long mode and paging,
 *   4. call kernel_main(start_info_paddr) on a 16-byte aligned stack.
 */

/* Xen PVH ELF note: name "Xen", type 18 = XEN_ELFNOTE_PHYS32_ENTRY, 8-byte descriptor. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    /* Zero .bss; %ebx (start info) is not touched by rep stosb. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %ebx, boot_start_info_paddr
    mov $boot_stack_top, %esp

    /* PML4[0] -> PDPT, PDPT[0..4] -> four page directories. */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    mov %eax, boot_pdpt
    add $0x1000, %eax
    mov %eax, boot_pdpt + 8
    add $0x1000, %eax
    mov %eax, boot_pdpt + 16
    add $0x1000, %eax
    mov %eax, boot_pdpt + 24

    /* 2048 entries of 2 MiB: present | writable | page size. */
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(, %ecx, 8)
    movl $0, boot_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    /* CR4: PAE (5) | OSFXSR (9) | OSXMMEXCPT (10): SSE must work before any Rust code. */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4

    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* CR0: clear EM (2) and TS (3); set PE (0), MP (1), NE (5), WP (16), PG (31). */
    mov %cr0, %eax
    and $0xFFFFFFF3, %eax
    or $0x80010023, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    and $-16, %rsp
    xor %ebp, %ebp
    mov boot_start_info_paddr(%rip), %edi
    call kernel_main
2:
    cli
    hlt
    jmp 2b

    .section .data.boot, "aw", @progbits
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
    .balign 8
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .balign 4
    .global boot_start_info_paddr
boot_start_info_paddr:
    .long 0

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
    .global boot_pdpt
boot_pdpt:
    .skip 4096
    .global boot_pd
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack_bottom:
    .skip 131072
    .global boot_stack_top
boot_stack_top:
