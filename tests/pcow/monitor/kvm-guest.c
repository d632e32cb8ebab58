/*
 * Image Monitor under KVM: a tiny real-mode guest whose memory is a pcow
 * image mapped by the monitor.
 *
 * The guest writes to a hole (expansion through KVM's gup -> userfaultfd),
 * writes to a snapshot-frozen cluster (KVM reports a write to a read-only
 * host page as KVM_EXIT_MMIO; we complete it with a host store as QEMU
 * does, which goes through the monitor's SIGSEGV COW handler), and reads a
 * hole then writes what it read plus 0x33 next to it (zero page, then WP
 * fault through gup).  Contents are checked from the host and after
 * reopening the image.  Exit 77 (skip) without /dev/kvm.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/kvm.h>

#include "mon-test.h"

#define CL (64 * 1024)
#define IMG_SIZE (4 * CL)
#define DATA_GPA 0x10000

static const uint8_t guest_code[] = {
    0xb8, 0x00, 0x10,                   /* mov ax, 0x1000 */
    0x8e, 0xd8,                         /* mov ds, ax */
    0xc6, 0x06, 0x10, 0x00, 0x11,       /* mov byte [0x10], 0x11: hole */
    0xb8, 0x00, 0x20,                   /* mov ax, 0x2000 */
    0x8e, 0xc0,                         /* mov es, ax */
    0x26, 0xc6, 0x06, 0x20, 0x00, 0x22, /* mov byte es:[0x20], 0x22: COW */
    0xb8, 0x00, 0x30,                   /* mov ax, 0x3000 */
    0x8e, 0xe0,                         /* mov fs, ax */
    0x64, 0xa0, 0x30, 0x00,             /* mov al, fs:[0x30]: hole read */
    0x04, 0x33,                         /* add al, 0x33 */
    0x64, 0xa2, 0x31, 0x00,             /* mov fs:[0x31], al */
    0xf4,                               /* hlt */
};

static int skip(const char *why)
{
    printf("SKIP: %s\n", why);
    return 77;
}

int main(void)
{
    const char *dir;
    char path[4200];
    uint8_t *shadow = calloc(1, IMG_SIZE);
    pcow_monitor_opts mo = { 0 };
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    struct kvm_userspace_memory_region code_slot, data_slot;
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    struct kvm_run *run;
    uint8_t *code, *base;
    int kvm, vm, vcpu, mmio_exits = 0, runsz;

    setvbuf(stdout, NULL, _IONBF, 0);
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        return skip("/dev/kvm is not available");
    }
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) {
        return skip("KVM_CREATE_VM failed");
    }
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);

    dir = test_dir("kvm");
    snprintf(path, sizeof(path), "%s/guest.pcow", dir);
    make_image(path, IMG_SIZE, CL, NULL, PCOW_BACKING_NONE);
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    base = pcow_monitor_base(mon);
    /* Cluster 1 gets data and is frozen by a snapshot. */
    fill(shadow + CL, CL, CL, 7);
    memcpy(base + CL, shadow + CL, CL);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "frozen", NULL, &err), &err);

    code = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(code != MAP_FAILED);
    memcpy(code, guest_code, sizeof(guest_code));
    code_slot = (struct kvm_userspace_memory_region){
        .slot = 0, .guest_phys_addr = 0, .memory_size = 4096,
        .userspace_addr = (uintptr_t)code,
    };
    data_slot = (struct kvm_userspace_memory_region){
        .slot = 1, .guest_phys_addr = DATA_GPA, .memory_size = IMG_SIZE,
        .userspace_addr = (uintptr_t)base,
    };
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &code_slot) == 0);
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &data_slot) == 0);
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    CHECK(vcpu >= 0);
    runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    CHECK(run != MAP_FAILED);
    CHECK(ioctl(vcpu, KVM_GET_SREGS, &sregs) == 0);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    CHECK(ioctl(vcpu, KVM_SET_SREGS, &sregs) == 0);
    memset(&regs, 0, sizeof(regs));
    regs.rip = 0;
    regs.rflags = 2;
    CHECK(ioctl(vcpu, KVM_SET_REGS, &regs) == 0);

    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "KVM_RUN: %s\n", strerror(errno));
            return 1;
        }
        if (run->exit_reason == KVM_EXIT_HLT) {
            break;
        }
        if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write &&
            run->mmio.phys_addr >= DATA_GPA &&
            run->mmio.phys_addr + run->mmio.len <= DATA_GPA + IMG_SIZE) {
            /* What QEMU does for RAM it cannot map writable: a host store. */
            memcpy(base + run->mmio.phys_addr - DATA_GPA, run->mmio.data,
                   run->mmio.len);
            mmio_exits++;
            continue;
        }
        fprintf(stderr, "unexpected exit %u (mmio addr 0x%llx write %u)\n",
                run->exit_reason, (unsigned long long)run->mmio.phys_addr,
                run->mmio.is_write);
        return 1;
    }

    shadow[0x10] = 0x11;
    shadow[CL + 0x20] = 0x22;
    shadow[2 * CL + 0x31] = 0x33;
    CHECK(memcmp(base, shadow, IMG_SIZE) == 0);
    pcow_monitor_get_stats(mon, &s);
    printf("mmio exits %d, expansions %" PRIu64 ", hole reads %" PRIu64
           ", cow %" PRIu64 "+%" PRIu64 "\n", mmio_exits, s.expansions,
           s.hole_read_faults, s.cow_unit_faults, s.cow_cluster_faults);
    CHECK_EQ(mmio_exits, 1);
    CHECK_EQ(s.expansions, 3);   /* host cluster 1, guest 0 and 2 */
    CHECK_EQ(s.cow_unit_faults + s.cow_cluster_faults, 1);
    CHECK(s.hole_read_faults >= 1);
    CHECK_EQ(s.errors, 0);
    close(vcpu);
    close(vm);
    close(kvm);
    CHECK_OK(pcow_monitor_close(mon, &err), &err);
    check_clean(path);
    verify_image(path, shadow, IMG_SIZE);
    printf("kvm-guest: ok\n");
    return 0;
}
