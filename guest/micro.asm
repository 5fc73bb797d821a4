; micro: the project's own tiny guest, a multiboot v1 ELF32 image.
;
; Built with `nasm -f bin` (scripts/build-guest.sh): the ELF header and its one
; program header are written by hand below, so no linker is needed and the very
; same file boots under our VMM and under `qemu-system-x86_64 -kernel`.
;
; It stays in 32-bit protected mode with paging off, and is written for a host
; that emulates it instruction by instruction (~1-2 M instructions/s under
; PVM) where every VM exit is costly: per-page work is five stores, console
; output goes out 16 bytes per `rep outsb` (one exit per chunk), and the timer
; EOI goes to the in-kernel PIC (no exit to userspace).
;
; Physical memory layout (the generation table lets `verify` run after a
; restore: it is ordinary guest memory, saved and restored with the rest):
;
;   0x00100000  this image: ELF header, multiboot header, code, data
;   ...         bss: stack, IDT, variables, line buffer
;   0x00180000  generation table: one u32 per region page (512 KiB, so the
;               region is at most 131072 pages = 512 MiB)
;   0x00200000  region: the pages the writer fills and dirties
;
; A region page written with generation g (g >= 1) holds, at byte offset:
;   0     g
;   4     page index i
;   8     seed
;   12    g ^ i ^ seed ^ 0x5A5AA5A5     (checksum)
;   4092  g                              (so a torn page shows)
; A page whose table entry is 0 was never written and must read zero there.
;
; Command line (multiboot cmdline, space-separated key=value):
;   workload=idle|writer|verify   (default idle)
;   mem=MiB      region size (default: all RAM above 2 MiB, at most 512)
;   rate=N       pages dirtied per second (0 = as fast as possible)
;   pattern=seq|random            order in which the writer dirties pages
;   seed=N       xorshift32 seed and a word of the pattern (default 1)
;   hz=N         PIT timer frequency (default 100)
;   hb=N         timer ticks between heartbeats (default 50)
;   beats=N      heartbeats before a final verify and done (0 = forever)
;
; Console protocol (COM1, one line each):
;   micro: boot workload=W mem=M pages=P
;   fill pages=P
;   hb SEQ dirtied=D ticks=T           writer heartbeat
;   tick SEQ                           idle heartbeat
;   bad page=I want=G got=W            verify, first 16 bad pages
;   verify pages=P bad=B
;   done status=S
; Input bytes (polled once per heartbeat): 'v' verify and go on, 'q' verify
; and finish (status 0 if clean, 1 if not), 'x' finish at once with status 0.
;
; Done signal: `out 0xf4, al` with the status (QEMU's isa-debug-exit port).
; Status: 0 ok, 1 verify found bad pages, 2 not booted by multiboot,
; 3 CPU exception.

bits 32
org 0x100000

LOAD_ADDR     equ 0x100000
GEN_TABLE     equ 0x180000
REGION_BASE   equ 0x200000
MAX_PAGES     equ 131072
COM1          equ 0x3f8
DONE_PORT     equ 0xf4
MB_MAGIC      equ 0x1BADB002
MB_FLAGS      equ 0x00000003          ; page-align modules, want memory info
BOOT_MAGIC    equ 0x2BADB002
PATTERN_XOR   equ 0x5A5AA5A5

; ---- ELF32 header ---------------------------------------------------------
elf_header:
    db 0x7f, 'E', 'L', 'F', 1, 1, 1, 0   ; ELFCLASS32, little-endian, version 1
    times 8 db 0
    dw 2                                  ; e_type: ET_EXEC
    dw 3                                  ; e_machine: EM_386
    dd 1                                  ; e_version
    dd _start                             ; e_entry
    dd program_header - $$                ; e_phoff
    dd 0                                  ; e_shoff
    dd 0                                  ; e_flags
    dw 52                                 ; e_ehsize
    dw 32                                 ; e_phentsize
    dw 1                                  ; e_phnum
    dw 40                                 ; e_shentsize
    dw 0                                  ; e_shnum
    dw 0                                  ; e_shstrndx
program_header:
    dd 1                                  ; p_type: PT_LOAD
    dd 0                                  ; p_offset
    dd LOAD_ADDR                          ; p_vaddr
    dd LOAD_ADDR                          ; p_paddr
    dd file_end - $$                      ; p_filesz
    dd bss_end - $$                       ; p_memsz
    dd 7                                  ; p_flags: RWX
    dd 0x1000                             ; p_align

; ---- multiboot v1 header (within the first 8 KiB, 4-byte aligned) ----------
align 4
multiboot_header:
    dd MB_MAGIC
    dd MB_FLAGS
    dd -(MB_MAGIC + MB_FLAGS)

; ---- entry ------------------------------------------------------------------
_start:
    cli
    cld
    mov esp, stack_top
    mov [boot_eax], eax
    mov [mbi_ptr], ebx
    lgdt [gdt_desc]
    jmp 0x08:.flat
.flat:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax

    call serial_init
    cmp dword [boot_eax], BOOT_MAGIC
    je .booted
    mov esi, str_not_multiboot
    call puts
    mov al, 2
    jmp done
.booted:
    call idt_init
    call pic_init
    call parse_cmdline
    call size_region
    call pit_init

    mov esi, str_boot
    call lb_str
    mov esi, [workload_name]
    call lb_str
    mov esi, str_mem
    call lb_str
    mov eax, [region_mib]
    call lb_dec
    mov esi, str_pages
    call lb_str
    mov eax, [npages]
    call lb_dec
    call lb_flush

    sti
    mov eax, [workload]
    cmp eax, 1
    je writer
    cmp eax, 2
    je verify_workload
    jmp idle

; ---- workloads --------------------------------------------------------------

; idle: halt until each timer tick; a heartbeat every hb ticks.
idle:
    mov eax, [ticks]
    add eax, [hb_ticks]
    mov [next_hb], eax
.loop:
    hlt
    mov eax, [ticks]
    cmp eax, [next_hb]
    jb .loop
    mov eax, [hb_ticks]
    add [next_hb], eax
    inc dword [hb_seq]
    mov esi, str_tick
    call lb_str
    mov eax, [hb_seq]
    call lb_dec
    call lb_flush
    call poll_input
    mov eax, [beats]
    test eax, eax
    jz .loop
    cmp [hb_seq], eax
    jb .loop
    mov al, 0
    jmp done

; verify: one pass over the region as the table describes it, then done.
verify_workload:
    call verify
    jmp done_after_verify

; writer: fill every page once, then dirty pages forever (or for `beats`).
writer:
    xor ecx, ecx
.fill:
    cmp ecx, [npages]
    jae .filled
    call write_page
    inc ecx
    jmp .fill
.filled:
    mov esi, str_fill
    call lb_str
    mov eax, [npages]
    call lb_dec
    call lb_flush
    mov eax, [ticks]
    mov [tick_seen], eax
    add eax, [hb_ticks]
    mov [next_hb], eax
.loop:
    ; rate limit: at most per_tick pages in one timer tick, then halt.
    mov eax, [per_tick]
    test eax, eax
    jz .pick
    mov edx, [ticks]
    cmp edx, [tick_seen]
    je .same_tick
    mov [tick_seen], edx
    mov dword [tick_budget], 0
.same_tick:
    cmp [tick_budget], eax
    jb .pick
    hlt
    jmp .beat_check
.pick:
    cmp dword [pattern], 1
    je .random
    mov ecx, [cursor]
    lea eax, [ecx + 1]
    cmp eax, [npages]
    jb .seq_store
    xor eax, eax
.seq_store:
    mov [cursor], eax
    jmp .write
.random:
    mov eax, [rng]                      ; xorshift32
    mov edx, eax
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    mov [rng], eax
    xor edx, edx
    div dword [npages]
    mov ecx, edx
.write:
    call write_page
    inc dword [dirtied]
    inc dword [tick_budget]
.beat_check:
    mov eax, [ticks]
    cmp eax, [next_hb]
    jb .loop
    mov eax, [hb_ticks]
    add [next_hb], eax
    inc dword [hb_seq]
    mov esi, str_hb
    call lb_str
    mov eax, [hb_seq]
    call lb_dec
    mov esi, str_dirtied
    call lb_str
    mov eax, [dirtied]
    call lb_dec
    mov esi, str_ticks
    call lb_str
    mov eax, [ticks]
    call lb_dec
    call lb_flush
    call poll_input
    mov eax, [beats]
    test eax, eax
    jz .loop
    cmp [hb_seq], eax
    jb .loop
    call verify
    jmp done_after_verify

; write_page: ecx = page index. Writes the next generation's pattern, then
; records the generation in the table (page first: a pause between the two
; stores leaves the table one behind, which verify would report; a snapshot
; is only taken between instructions of a stopped vCPU, never mid-page).
write_page:
    push eax
    push ebx
    push edx
    mov eax, [GEN_TABLE + ecx*4]
    inc eax
    mov ebx, ecx
    shl ebx, 12
    add ebx, REGION_BASE
    mov [ebx], eax
    mov [ebx + 4], ecx
    mov edx, [seed]
    mov [ebx + 8], edx
    xor edx, eax
    xor edx, ecx
    xor edx, PATTERN_XOR
    mov [ebx + 12], edx
    mov [ebx + 4092], eax
    mov [GEN_TABLE + ecx*4], eax
    pop edx
    pop ebx
    pop eax
    ret

; verify: compare every region page with its table entry; bad_count = result.
verify:
    pushad
    mov dword [bad_count], 0
    xor ecx, ecx
.page:
    cmp ecx, [npages]
    jae .end
    mov eax, [GEN_TABLE + ecx*4]
    mov ebx, ecx
    shl ebx, 12
    add ebx, REGION_BASE
    test eax, eax
    jnz .written
    cmp dword [ebx], 0                  ; never written: must still be zero
    jne .bad
    cmp dword [ebx + 4092], 0
    jne .bad
    jmp .next
.written:
    cmp [ebx], eax
    jne .bad
    cmp [ebx + 4], ecx
    jne .bad
    mov edx, [seed]
    cmp [ebx + 8], edx
    jne .bad
    xor edx, eax
    xor edx, ecx
    xor edx, PATTERN_XOR
    cmp [ebx + 12], edx
    jne .bad
    cmp [ebx + 4092], eax
    jne .bad
.next:
    inc ecx
    jmp .page
.bad:
    inc dword [bad_count]
    cmp dword [bad_count], 16
    ja .next
    push eax
    mov esi, str_bad
    call lb_str
    mov eax, ecx
    call lb_dec
    mov esi, str_want
    call lb_str
    pop eax
    call lb_dec
    mov esi, str_got
    call lb_str
    mov eax, [ebx]
    call lb_dec
    call lb_flush
    jmp .next
.end:
    mov esi, str_verify
    call lb_str
    mov eax, [npages]
    call lb_dec
    mov esi, str_badn
    call lb_str
    mov eax, [bad_count]
    call lb_dec
    call lb_flush
    popad
    ret

done_after_verify:
    xor eax, eax
    cmp dword [bad_count], 0
    je done
    mov al, 1
; done: al = status. Prints it, then signals the VMM (QEMU: isa-debug-exit).
done:
    movzx eax, al
    mov [done_status], eax
    mov esi, str_done
    call lb_str
    mov eax, [done_status]
    call lb_dec
    call lb_flush
    mov eax, [done_status]
    out DONE_PORT, al
    cli
.halt:
    hlt
    jmp .halt

; poll_input: one LSR read per heartbeat; acts on at most one byte.
poll_input:
    mov dx, COM1 + 5
    in al, dx
    test al, 1
    jz .none
    mov dx, COM1
    in al, dx
    cmp al, 'v'
    je .verify
    cmp al, 'q'
    je .quit
    cmp al, 'x'
    je .exit
.none:
    ret
.verify:
    call verify
    ret
.quit:
    call verify
    jmp done_after_verify
.exit:
    mov al, 0
    jmp done

; ---- command line -----------------------------------------------------------

; parse_cmdline: reads key=value words from the multiboot cmdline (flag bit 2).
parse_cmdline:
    mov ebx, [mbi_ptr]
    test dword [ebx], 1 << 2
    jz .out
    mov esi, [ebx + 16]
.word:
    lodsb
    test al, al
    jz .out
    cmp al, ' '
    je .word
    dec esi
    mov edi, keys
.try_key:
    mov edx, [edi]                      ; key string, 0 ends the table
    test edx, edx
    jz .skip_word
    push esi
.cmp:
    mov al, [edx]
    test al, al
    jz .key_end
    cmp al, [esi]
    jne .no_match
    inc edx
    inc esi
    jmp .cmp
.key_end:
    cmp byte [esi], '='
    jne .no_match
    inc esi
    add esp, 4
    call [edi + 4]                      ; handler: esi = value; returns esi past it
    jmp .skip_word
.no_match:
    pop esi
    add edi, 8
    jmp .try_key
.skip_word:
    lodsb
    test al, al
    jz .out
    cmp al, ' '
    jne .skip_word
    jmp .word
.out:
    ret

; parse_dec: esi = digits; eax = value; esi past the digits.
parse_dec:
    xor eax, eax
.digit:
    movzx edx, byte [esi]
    sub edx, '0'
    cmp edx, 9
    ja .end
    imul eax, eax, 10
    add eax, edx
    inc esi
    jmp .digit
.end:
    ret

; match_word: esi = value, edx = word; ZF set when the value is that word.
match_word:
    push esi
.c:
    mov al, [edx]
    test al, al
    jz .end
    cmp al, [esi]
    jne .no
    inc edx
    inc esi
    jmp .c
.end:
    mov al, [esi]                       ; the value must end here too
    test al, al
    jz .yes
    cmp al, ' '
    jz .yes
.no:
    pop esi
    or eax, 1                           ; clears ZF
    ret
.yes:
    pop esi
    xor eax, eax                        ; sets ZF
    ret

key_workload:
    mov edx, str_writer
    call match_word
    jnz .not_writer
    mov dword [workload], 1
    mov dword [workload_name], str_writer
    ret
.not_writer:
    mov edx, str_verify_w
    call match_word
    jnz .not_verify
    mov dword [workload], 2
    mov dword [workload_name], str_verify_w
    ret
.not_verify:
    ret
key_mem:
    call parse_dec
    mov [region_mib], eax
    ret
key_rate:
    call parse_dec
    mov [rate], eax
    ret
key_pattern:
    mov edx, str_random
    call match_word
    jnz .seq
    mov dword [pattern], 1
    ret
.seq:
    mov dword [pattern], 0
    ret
key_seed:
    call parse_dec
    test eax, eax
    jnz .store
    inc eax                             ; xorshift32 must not start at 0
.store:
    mov [seed], eax
    mov [rng], eax
    ret
key_hz:
    call parse_dec
    test eax, eax
    jz .keep
    mov [hz], eax
.keep:
    ret
key_hb:
    call parse_dec
    test eax, eax
    jz .keep
    mov [hb_ticks], eax
.keep:
    ret
key_beats:
    call parse_dec
    mov [beats], eax
    ret

; size_region: npages from mem= and the RAM multiboot reports; per_tick.
size_region:
    mov ebx, [mbi_ptr]
    mov eax, 0x2000000                  ; no memory info: assume 32 MiB
    test dword [ebx], 1
    jz .have_top
    mov eax, [ebx + 8]                  ; mem_upper, KiB above 1 MiB
    add eax, 1024
    shl eax, 10
.have_top:
    sub eax, REGION_BASE
    shr eax, 12                         ; pages that fit
    cmp eax, MAX_PAGES
    jbe .fits
    mov eax, MAX_PAGES
.fits:
    mov edx, [region_mib]
    shl edx, 8                          ; MiB -> pages
    test edx, edx
    jz .use_all
    cmp edx, eax
    jbe .take
.use_all:
    mov edx, eax
.take:
    mov [npages], edx
    shr edx, 8
    mov [region_mib], edx
    ; per_tick = ceil(rate / hz), 0 when unlimited
    mov eax, [rate]
    test eax, eax
    jz .store_rate
    add eax, [hz]
    dec eax
    xor edx, edx
    div dword [hz]
.store_rate:
    mov [per_tick], eax
    ret

; ---- console (COM1, 16550) ----------------------------------------------------

serial_init:
    mov dx, COM1 + 1
    xor al, al
    out dx, al                          ; IER: no interrupts, we poll
    mov dx, COM1 + 3
    mov al, 0x80
    out dx, al                          ; LCR: DLAB
    mov dx, COM1
    mov al, 1
    out dx, al                          ; DLL: 115200 baud
    mov dx, COM1 + 1
    xor al, al
    out dx, al                          ; DLM
    mov dx, COM1 + 3
    mov al, 0x03
    out dx, al                          ; LCR: 8N1
    mov dx, COM1 + 2
    mov al, 0xC7
    out dx, al                          ; FCR: FIFOs on, cleared, 14-byte trigger
    mov dx, COM1 + 4
    mov al, 0x0B
    out dx, al                          ; MCR: DTR, RTS, OUT2
    ret

; puts: esi = zero-terminated string. Waits for THRE (transmit FIFO empty) then
; sends up to 16 bytes with one `rep outsb`: one VM exit per 16 bytes.
puts:
    push eax
    push ecx
    push edx
    push edi
    mov edi, esi
    xor ecx, ecx
.len:
    cmp byte [edi + ecx], 0
    je .send
    inc ecx
    jmp .len
.send:
    test ecx, ecx
    jz .out
    mov edi, ecx                        ; edi = bytes left
.chunk:
    mov dx, COM1 + 5
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov ecx, edi
    cmp ecx, 16
    jbe .n
    mov ecx, 16
.n:
    sub edi, ecx
    mov dx, COM1
    rep outsb
    test edi, edi
    jnz .chunk
.out:
    pop edi
    pop edx
    pop ecx
    pop eax
    ret

; The line buffer: lb_str / lb_dec append, lb_flush adds '\n' and sends it.
lb_str:
    push eax
    push edi
    mov edi, [lb_len]
.c:
    lodsb
    test al, al
    jz .end
    mov [line_buf + edi], al
    inc edi
    jmp .c
.end:
    mov [lb_len], edi
    pop edi
    pop eax
    ret

lb_dec:
    pushad
    mov ecx, 10
    mov edi, dec_buf + 11
    mov byte [edi], 0
.d:
    xor edx, edx
    div ecx
    add dl, '0'
    dec edi
    mov [edi], dl
    test eax, eax
    jnz .d
    mov esi, edi
    call lb_str
    popad
    ret

lb_flush:
    push esi
    push edi
    mov edi, [lb_len]
    mov byte [line_buf + edi], 10
    mov byte [line_buf + edi + 1], 0
    mov esi, line_buf
    call puts
    mov dword [lb_len], 0
    pop edi
    pop esi
    ret

; ---- interrupts -------------------------------------------------------------

; pic_init: remap the 8259s to vectors 0x20-0x2f; unmask only IRQ0 (PIT).
pic_init:
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    ret

; pit_init: channel 0, mode 2 (rate generator) at hz.
pit_init:
    mov eax, 1193182
    xor edx, edx
    div dword [hz]
    mov ecx, eax
    mov al, 0x34
    out 0x43, al
    mov al, cl
    out 0x40, al
    mov al, ch
    out 0x40, al
    ret

; idt_init: every vector gets a gate; 0-31 report the exception, 0x20 counts
; ticks, the rest acknowledge and return.
idt_init:
    xor ecx, ecx
.fill:
    mov eax, ignore_irq
    cmp ecx, 32
    jae .set
    mov eax, [exception_stubs + ecx*4]
.set:
    cmp ecx, 0x20
    jne .gate
    mov eax, timer_irq
.gate:
    mov [idt + ecx*8], ax
    mov word [idt + ecx*8 + 2], 0x08
    mov word [idt + ecx*8 + 4], 0x8e00  ; present, DPL 0, 32-bit interrupt gate
    shr eax, 16
    mov [idt + ecx*8 + 6], ax
    inc ecx
    cmp ecx, 256
    jb .fill
    lidt [idt_desc]
    ret

; Interrupt handlers return with IRET_EMULATED, not `iret`: under PVM an
; unenlightened guest runs in KVM's x86 instruction emulator, whose em_iret
; handles real-mode IRET only (protected mode gives KVM_EXIT_INTERNAL_ERROR,
; emulation failure). The macro does a same-privilege interrupt return by
; hand: the frame [eip, cs, eflags] becomes [eflags, eip], then `popfd; ret`.
; An interrupt arriving between popfd and ret nests cleanly below it.
%macro IRET_EMULATED 0
    push eax
    mov eax, [esp + 4]                  ; eip
    xchg eax, [esp + 12]                ; eflags slot <- eip, eax <- eflags
    mov [esp + 8], eax                  ; cs slot <- eflags
    pop eax
    add esp, 4                          ; drop the old eip slot
    popfd
    ret
%endmacro

timer_irq:
    push eax
    inc dword [ticks]
    mov al, 0x20
    out 0x20, al                        ; EOI to the master PIC (in-kernel: no exit)
    pop eax
    IRET_EMULATED

ignore_irq:
    push eax
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop eax
    IRET_EMULATED

%macro EXC 1
exc_%1:
%if %1 = 8 || (%1 >= 10 && %1 <= 14) || %1 = 17 || %1 = 21 || %1 = 29 || %1 = 30
%else
    push dword 0
%endif
    push dword %1
    jmp exception
%endmacro
%assign v 0
%rep 32
EXC v
%assign v v+1
%endrep

exception_stubs:
%assign v 0
%rep 32
    dd exc_ %+ v
%assign v v+1
%endrep

; exception: [esp] vector, [esp+4] error code, [esp+8] eip.
exception:
    mov esi, str_exception
    call lb_str
    mov eax, [esp]
    call lb_dec
    mov esi, str_err
    call lb_str
    mov eax, [esp + 4]
    call lb_dec
    mov esi, str_eip
    call lb_str
    mov eax, [esp + 8]
    call lb_dec
    call lb_flush
    mov al, 3
    jmp done

; ---- data ---------------------------------------------------------------------
align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff                ; 0x08: code, flat 4 GiB, 32-bit
    dq 0x00cf92000000ffff                ; 0x10: data, flat 4 GiB
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd gdt
idt_desc:
    dw 256 * 8 - 1
    dd idt

keys:
    dd str_k_workload, key_workload
    dd str_k_mem, key_mem
    dd str_k_rate, key_rate
    dd str_k_pattern, key_pattern
    dd str_k_seed, key_seed
    dd str_k_hz, key_hz
    dd str_k_hb, key_hb
    dd str_k_beats, key_beats
    dd 0, 0

; Settings (defaults here; the command line overrides them).
workload:      dd 0                      ; 0 idle, 1 writer, 2 verify
workload_name: dd str_idle
region_mib:    dd 0
rate:          dd 0
pattern:       dd 0                      ; 0 seq, 1 random
seed:          dd 1
rng:           dd 1
hz:            dd 100
hb_ticks:      dd 50
beats:         dd 0

str_k_workload: db "workload", 0
str_k_mem:      db "mem", 0
str_k_rate:     db "rate", 0
str_k_pattern:  db "pattern", 0
str_k_seed:     db "seed", 0
str_k_hz:       db "hz", 0
str_k_hb:       db "hb", 0
str_k_beats:    db "beats", 0
str_idle:       db "idle", 0
str_writer:     db "writer", 0
str_verify_w:   db "verify", 0
str_random:     db "random", 0
str_boot:       db "micro: boot workload=", 0
str_mem:        db " mem=", 0
str_pages:      db " pages=", 0
str_fill:       db "fill pages=", 0
str_hb:         db "hb ", 0
str_dirtied:    db " dirtied=", 0
str_ticks:      db " ticks=", 0
str_tick:       db "tick ", 0
str_bad:        db "bad page=", 0
str_want:       db " want=", 0
str_got:        db " got=", 0
str_verify:     db "verify pages=", 0
str_badn:       db " bad=", 0
str_done:       db "done status=", 0
str_exception:  db "exception vector=", 0
str_err:        db " err=", 0
str_eip:        db " eip=", 0
str_not_multiboot: db "micro: not booted by a multiboot loader", 10, 0

align 16
file_end:

; ---- bss (zeroed by the loader: p_memsz > p_filesz) --------------------------
absolute file_end
boot_eax:    resd 1
mbi_ptr:     resd 1
npages:      resd 1
per_tick:    resd 1
ticks:       resd 1
tick_seen:   resd 1
tick_budget: resd 1
next_hb:     resd 1
hb_seq:      resd 1
dirtied:     resd 1
cursor:      resd 1
bad_count:   resd 1
done_status: resd 1
lb_len:      resd 1
dec_buf:     resb 12
line_buf:    resb 256
alignb 8
idt:         resb 256 * 8
alignb 16
stack:       resb 16384
stack_top:
bss_end:
