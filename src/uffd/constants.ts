// Kernel names kept verbatim (include/uapi/linux/userfaultfd.h). Feature and
// ioctl masks are bigints: UFFDIO_API speaks u64 and new bits keep coming.

/** UFFD_USER_MODE_ONLY: only user-mode faults are reported; kernel accesses get EFAULT. */
export const UFFD_USER_MODE_ONLY = 1;

export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;

export const UFFD_PAGEFAULT_FLAG_WRITE = 1n << 0n;
export const UFFD_PAGEFAULT_FLAG_WP = 1n << 1n;
export const UFFD_PAGEFAULT_FLAG_MINOR = 1n << 2n;

/** Every UFFD_FEATURE_* bit this library knows, by kernel name. */
export const UFFD_FEATURE = {
  PAGEFAULT_FLAG_WP: 1n << 0n,
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  MISSING_HUGETLBFS: 1n << 4n,
  MISSING_SHMEM: 1n << 5n,
  EVENT_UNMAP: 1n << 6n,
  SIGBUS: 1n << 7n,
  THREAD_ID: 1n << 8n,
  MINOR_HUGETLBFS: 1n << 9n,
  MINOR_SHMEM: 1n << 10n,
  EXACT_ADDRESS: 1n << 11n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
  WP_UNPOPULATED: 1n << 13n,
  POISON: 1n << 14n,
  WP_ASYNC: 1n << 15n,
  MOVE: 1n << 16n,
} as const;
export type FeatureName = keyof typeof UFFD_FEATURE;
export const FEATURE_NAMES = Object.keys(UFFD_FEATURE) as FeatureName[];

/** UFFDIO_REGISTER_MODE_*. */
export const UFFDIO_REGISTER_MODE = { MISSING: 1, WP: 2, MINOR: 4 } as const;
export type RegisterModeName = keyof typeof UFFDIO_REGISTER_MODE;

export const UFFDIO_COPY_MODE_DONTWAKE = 1;
export const UFFDIO_COPY_MODE_WP = 2;
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1;
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2;
export const UFFDIO_CONTINUE_MODE_DONTWAKE = 1;
export const UFFDIO_CONTINUE_MODE_WP = 2;
export const UFFDIO_POISON_MODE_DONTWAKE = 1;
export const UFFDIO_MOVE_MODE_DONTWAKE = 1;
export const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 2;

/** The _UFFDIO_* ioctl numbers: bit positions in the ioctls masks the kernel returns. */
export const UFFDIO_IOCTL_BIT = {
  REGISTER: 0x00,
  UNREGISTER: 0x01,
  WAKE: 0x02,
  COPY: 0x03,
  ZEROPAGE: 0x04,
  MOVE: 0x05,
  WRITEPROTECT: 0x06,
  CONTINUE: 0x07,
  POISON: 0x08,
  API: 0x3f,
} as const;
export type IoctlName = keyof typeof UFFDIO_IOCTL_BIT;

/** sizeof(struct uffd_msg): every message read from a uffd is exactly this long. */
export const UFFD_MSG_SIZE = 32;
