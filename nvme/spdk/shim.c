/* keel-nvme's SPDK shim: the few SPDK calls the spdk backend makes, with scalar and opaque
 * arguments only, compiled against the installed SPDK headers (so struct layouts such as
 * spdk_env_opts come from the SPDK being linked, never from a copy in Rust). */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spdk/bdev.h>
#include <spdk/env.h>
#include <spdk/init.h>
#include <spdk/log.h>
#include <spdk/thread.h>

/* Initializes the SPDK environment (DPDK EAL: hugepages, no PCI devices are probed) and the
 * thread library. Called once per process, on the thread that will poll the app thread. */
int keel_spdk_env_init(const char *name, int mem_size_mb, char *err, size_t err_len)
{
	struct spdk_env_opts opts;

	spdk_env_opts_init(&opts);
	opts.name = name;
	opts.core_mask = "0x1";
	if (mem_size_mb > 0) {
		opts.mem_size = mem_size_mb;
	}
	opts.no_pci = false;
	/* No telemetry socket or its thread: Keel's own stats and metrics report the node. */
	opts.env_context = "--no-telemetry";
	spdk_log_set_print_level(SPDK_LOG_ERROR);
	if (spdk_env_init(&opts) < 0) {
		snprintf(err, err_len, "spdk_env_init failed (are hugepages reserved and hugetlbfs "
			 "mounted? e.g. echo 512 > /proc/sys/vm/nr_hugepages)");
		return -1;
	}
	int rc = spdk_thread_lib_init(NULL, 0);
	if (rc != 0) {
		snprintf(err, err_len, "spdk_thread_lib_init: %s", strerror(-rc));
		return -1;
	}
	return 0;
}

/* A new SPDK thread, made the calling OS thread's current one. */
struct spdk_thread *keel_spdk_thread_start(const char *name)
{
	struct spdk_thread *t = spdk_thread_create(name, NULL);

	if (t != NULL) {
		spdk_set_thread(t);
	}
	return t;
}

/* Runs the thread's messages and pollers once; > 0 if any did work. */
int keel_spdk_thread_poll(struct spdk_thread *t)
{
	return spdk_thread_poll(t, 0, 0);
}

/* Ends the calling OS thread's SPDK thread: true once it is gone (poll until then). */
bool keel_spdk_thread_stop(struct spdk_thread *t, bool first)
{
	if (first) {
		spdk_thread_exit(t);
	}
	spdk_thread_poll(t, 0, 0);
	if (!spdk_thread_is_exited(t)) {
		return false;
	}
	spdk_set_thread(NULL);
	spdk_thread_destroy(t);
	return true;
}

/* Starts every SPDK subsystem and applies the JSON config (which creates the bdevs). `done`
 * runs on this thread, from a later poll, with 0 or a negative errno. */
void keel_spdk_subsystems_start(const char *json_config, void (*done)(int, void *), void *arg)
{
	spdk_subsystem_init_from_json_config(json_config, NULL, done, arg, true);
}

static void bdev_event(enum spdk_bdev_event_type type, struct spdk_bdev *bdev, void *ctx)
{
	/* A removed bdev fails its I/O from then on; the shard sees the errors. */
	(void)type;
	(void)bdev;
	(void)ctx;
}

/* Opens bdev `name` for writing on the current SPDK thread. */
int keel_spdk_open(const char *name, struct spdk_bdev_desc **desc, uint32_t *block_size,
		   uint64_t *num_blocks, bool *flush, struct spdk_io_channel **ch)
{
	int rc = spdk_bdev_open_ext(name, true, bdev_event, NULL, desc);

	if (rc != 0) {
		return rc;
	}
	struct spdk_bdev *bdev = spdk_bdev_desc_get_bdev(*desc);
	*block_size = spdk_bdev_get_block_size(bdev);
	*num_blocks = spdk_bdev_get_num_blocks(bdev);
	*flush = spdk_bdev_io_type_supported(bdev, SPDK_BDEV_IO_TYPE_FLUSH);
	*ch = spdk_bdev_get_io_channel(*desc);
	if (*ch == NULL) {
		spdk_bdev_close(*desc);
		return -ENOMEM;
	}
	return 0;
}

void keel_spdk_close(struct spdk_bdev_desc *desc, struct spdk_io_channel *ch)
{
	spdk_put_io_channel(ch);
	spdk_bdev_close(desc);
}

void *keel_spdk_dma_alloc(size_t len, size_t align)
{
	return spdk_dma_zmalloc(len, align, NULL);
}

void keel_spdk_dma_free(void *buf)
{
	spdk_dma_free(buf);
}

typedef void (*keel_done_fn)(bool ok, void *arg);

/* One I/O: kind 0 read, 1 write, 2 flush. 0 or a negative errno (-ENOMEM: no I/O slot free
 * now, try again after a poll). `done(ok, arg)` runs from a later poll of this thread. */
static void io_done(struct spdk_bdev_io *io, bool ok, void *arg);

struct keel_io_ctx {
	keel_done_fn done;
	void *arg;
};

int keel_spdk_io(int kind, struct spdk_bdev_desc *desc, struct spdk_io_channel *ch, void *buf,
		 uint64_t offset, uint64_t len, keel_done_fn done, void *arg)
{
	struct keel_io_ctx *c = malloc(sizeof(*c));

	if (c == NULL) {
		return -ENOMEM;
	}
	c->done = done;
	c->arg = arg;
	int rc;
	switch (kind) {
	case 0:
		rc = spdk_bdev_read(desc, ch, buf, offset, len, io_done, c);
		break;
	case 1:
		rc = spdk_bdev_write(desc, ch, buf, offset, len, io_done, c);
		break;
	default:
		rc = spdk_bdev_flush(desc, ch, offset, len, io_done, c);
		break;
	}
	if (rc != 0) {
		free(c);
	}
	return rc;
}

static void io_done(struct spdk_bdev_io *io, bool ok, void *arg)
{
	struct keel_io_ctx *c = arg;

	spdk_bdev_free_io(io);
	c->done(ok, c->arg);
	free(c);
}
