// Every KVM number the VMM uses, with the kernel's names verbatim. Values come
// from <linux/kvm.h> (x86-64); the ioctl numbers encode their struct's size,
// so a size below and its ioctl change together.

/** KVM_API_VERSION: the only API version there has ever been. */
export const KVM_API_VERSION = 12;

/** ioctl request numbers (ioctl(2) second argument). */
export const KVM = {
  // system fd (/dev/kvm)
  KVM_GET_API_VERSION: 0xae00,
  KVM_CREATE_VM: 0xae01,
  KVM_GET_MSR_INDEX_LIST: 0xc004ae02,
  KVM_CHECK_EXTENSION: 0xae03,
  KVM_GET_VCPU_MMAP_SIZE: 0xae04,
  KVM_GET_SUPPORTED_CPUID: 0xc008ae05,
  // VM fd
  KVM_CREATE_VCPU: 0xae41,
  KVM_GET_DIRTY_LOG: 0x4010ae42,
  KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
  KVM_SET_TSS_ADDR: 0xae47,
  KVM_SET_IDENTITY_MAP_ADDR: 0x4008ae48,
  KVM_CREATE_IRQCHIP: 0xae60,
  KVM_IRQ_LINE: 0x4008ae61,
  KVM_GET_IRQCHIP: 0xc208ae62,
  KVM_SET_IRQCHIP: 0x8208ae63,
  KVM_CREATE_PIT2: 0x4040ae77,
  KVM_SET_CLOCK: 0x4030ae7b,
  KVM_GET_CLOCK: 0x8030ae7c,
  KVM_GET_PIT2: 0x8070ae9f,
  KVM_SET_PIT2: 0x4070aea0,
  KVM_ENABLE_CAP: 0x4068aea3,
  KVM_CLEAR_DIRTY_LOG: 0xc018aec0,
  // vCPU fd
  KVM_RUN: 0xae80,
  KVM_GET_REGS: 0x8090ae81,
  KVM_SET_REGS: 0x4090ae82,
  KVM_GET_SREGS: 0x8138ae83,
  KVM_SET_SREGS: 0x4138ae84,
  KVM_GET_MSRS: 0xc008ae88,
  KVM_SET_MSRS: 0x4008ae89,
  KVM_GET_FPU: 0x81a0ae8c,
  KVM_SET_FPU: 0x41a0ae8d,
  KVM_GET_LAPIC: 0x8400ae8e,
  KVM_SET_LAPIC: 0x4400ae8f,
  KVM_SET_CPUID2: 0x4008ae90,
  KVM_GET_CPUID2: 0xc008ae91,
  KVM_GET_MP_STATE: 0x8004ae98,
  KVM_SET_MP_STATE: 0x4004ae99,
  KVM_GET_VCPU_EVENTS: 0x8040ae9f,
  KVM_SET_VCPU_EVENTS: 0x4040aea0,
  KVM_GET_DEBUGREGS: 0x8080aea1,
  KVM_SET_DEBUGREGS: 0x4080aea2,
  KVM_SET_TSC_KHZ: 0xaea2,
  KVM_GET_TSC_KHZ: 0xaea3,
  KVM_GET_XSAVE: 0x9000aea4,
  KVM_SET_XSAVE: 0x5000aea5,
  KVM_GET_XCRS: 0x8188aea6,
  KVM_SET_XCRS: 0x4188aea7,
  KVM_KVMCLOCK_CTRL: 0xaead,
  /** Same struct as KVM_GET_XSAVE but sized by KVM_CAP_XSAVE2 (AMX and other large states). */
  KVM_GET_XSAVE2: 0x9000aecf,
} as const;
export type KvmIoctlName = keyof typeof KVM;

/** KVM_CHECK_EXTENSION capability numbers. */
export const KVM_CAP = {
  KVM_CAP_IRQCHIP: 0,
  KVM_CAP_USER_MEMORY: 3,
  KVM_CAP_NR_VCPUS: 9,
  KVM_CAP_SYNC_MMU: 16,
  KVM_CAP_ADJUST_CLOCK: 39,
  KVM_CAP_PIT2: 33,
  KVM_CAP_VCPU_EVENTS: 41,
  KVM_CAP_DEBUGREGS: 50,
  KVM_CAP_XSAVE: 55,
  KVM_CAP_XCRS: 56,
  KVM_CAP_TSC_CONTROL: 60,
  KVM_CAP_GET_TSC_KHZ: 61,
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_IMMEDIATE_EXIT: 136,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: 168,
  KVM_CAP_DIRTY_LOG_RING: 192,
  KVM_CAP_XSAVE2: 208,
} as const;
export type KvmCapName = keyof typeof KVM_CAP;

/** kvm_run.exit_reason values. */
export const KVM_EXIT = {
  KVM_EXIT_UNKNOWN: 0,
  KVM_EXIT_EXCEPTION: 1,
  KVM_EXIT_IO: 2,
  KVM_EXIT_HYPERCALL: 3,
  KVM_EXIT_DEBUG: 4,
  KVM_EXIT_HLT: 5,
  KVM_EXIT_MMIO: 6,
  KVM_EXIT_SHUTDOWN: 8,
  KVM_EXIT_FAIL_ENTRY: 9,
  KVM_EXIT_INTR: 10,
  KVM_EXIT_INTERNAL_ERROR: 17,
  KVM_EXIT_SYSTEM_EVENT: 24,
} as const;

/** kvm_run.io.direction. */
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

/** kvm_irqchip.chip_id. */
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

/** kvm_userspace_memory_region.flags: track the slot's dirty pages (KVM_GET_DIRTY_LOG). */
export const KVM_MEM_LOG_DIRTY_PAGES = 1;

/**
 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's args[0]: MANUAL_PROTECT_ENABLE makes
 * KVM_GET_DIRTY_LOG stop re-protecting what it reports (KVM_CLEAR_DIRTY_LOG
 * does, for just the pages about to be sent); INITIALLY_SET starts the log with
 * every page dirty, so turning logging on does not write-protect the whole
 * slot at once (Cloud Hypervisor measured 4-5 ms per GiB of stall without it).
 */
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
export const KVM_DIRTY_LOG_INITIALLY_SET = 2;

/** kvm_pit_config.flags: the PIT's speaker port (0x61) is emulated in-kernel too. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** kvm_mp_state.mp_state. */
export const KVM_MP_STATE = {
  KVM_MP_STATE_RUNNABLE: 0,
  KVM_MP_STATE_UNINITIALIZED: 1,
  KVM_MP_STATE_INIT_RECEIVED: 2,
  KVM_MP_STATE_HALTED: 3,
  KVM_MP_STATE_SIPI_RECEIVED: 4,
} as const;

/** Struct sizes (bytes), sizeof(struct ...) on x86-64. */
export const KVM_SIZE = {
  kvm_regs: 144,
  kvm_sregs: 312,
  kvm_segment: 24,
  kvm_dtable: 16,
  kvm_fpu: 416,
  kvm_xsave: 4096,
  kvm_xcrs: 392,
  kvm_lapic_state: 1024,
  kvm_vcpu_events: 64,
  kvm_mp_state: 4,
  kvm_debugregs: 128,
  kvm_irqchip: 520,
  kvm_pit_state2: 112,
  kvm_clock_data: 48,
  kvm_userspace_memory_region: 32,
  kvm_cpuid2: 8,
  kvm_cpuid_entry2: 40,
  kvm_msrs: 8,
  kvm_msr_entry: 16,
  kvm_msr_list: 4,
  kvm_irq_level: 8,
  kvm_pit_config: 64,
  kvm_dirty_log: 16,
  kvm_clear_dirty_log: 24,
  kvm_enable_cap: 104,
} as const;

/** Offsets into struct kvm_run (the vCPU's mmap'ed page). */
export const KVM_RUN_OFFSET = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  flags: 14,
  cr8: 16,
  apic_base: 24,
  /** The exit-specific union. */
  exit: 32,
} as const;

/** Identity-mapped page table and TSS pages Intel VMX needs below 4 GiB (ignored elsewhere). */
export const KVM_TSS_ADDRESS = 0xfffbd000;
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;
