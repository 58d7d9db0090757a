// treegate/parallel/thread_pool.hpp — a fixed set of threads that run the pieces of one job,
// taking them from one shared counter (an executor; see parallel/executor.hpp).
#ifndef TREEGATE_PARALLEL_THREAD_POOL_HPP
#define TREEGATE_PARALLEL_THREAD_POOL_HPP

#include "../config.hpp"
#include "../error.hpp"
#include "executor.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace treegate::parallel {

/// `threads` workers in all: the thread that calls run() is worker 0 and `threads - 1` threads
/// are started by the constructor and joined by the destructor. Each run() hands out piece
/// numbers from one atomic counter, so a fast worker takes more pieces; which worker runs a
/// piece never changes a result, because layers make each piece's output independent of it.
///
/// run() may be called from any thread; concurrent calls on one pool take turns. run() must not
/// be called from inside a piece (it would wait for itself). An exception thrown by a piece is
/// rethrown by run() after the other pieces have finished (pieces not yet started are skipped).
class thread_pool {
public:
    explicit thread_pool(int threads) : size_(threads) {
        detail::check_config(threads >= 1 && threads <= 1024, "thread_pool", ": thread count must be in [1, 1024], got ",
                             threads);
        threads_.reserve(static_cast<std::size_t>(threads - 1));
        try {
            for (int w = 1; w < threads; ++w) threads_.emplace_back([this, w] { worker_loop(w); });
        } catch (...) {
            shutdown();
            throw;
        }
    }

    /// The number of hardware threads (at least 1).
    static int hardware_threads() noexcept {
        const unsigned n = std::thread::hardware_concurrency();
        return n == 0 ? 1 : static_cast<int>(n);
    }

    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    ~thread_pool() { shutdown(); }

    int size() const noexcept { return size_; }

    template <class F>
    void run(index_t pieces, F&& fn) {
        if (pieces <= 0) return;
        if (size_ == 1 || pieces == 1) {
            serial::run(pieces, fn);
            return;
        }
        using fn_type = std::remove_reference_t<F>;
        std::lock_guard<std::mutex> turn(run_mutex_);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = [](void* f, index_t piece, int worker) { (*static_cast<fn_type*>(f))(piece, worker); };
            job_fn_ = const_cast<void*>(static_cast<const void*>(&fn));
            pieces_ = pieces;
            next_.store(0, std::memory_order_relaxed);
            failed_.store(false, std::memory_order_relaxed);
            error_ = nullptr;
            busy_ = size_ - 1;
            ++generation_;
        }
        start_.notify_all();
        work(0);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return busy_ == 0; });
        if (error_) {
            std::exception_ptr e = error_;
            error_ = nullptr;
            lock.unlock();
            std::rethrow_exception(e);
        }
    }

private:
    void work(int worker) noexcept {
        for (;;) {
            const index_t piece = next_.fetch_add(1, std::memory_order_relaxed);
            if (piece >= pieces_) return;
            if (failed_.load(std::memory_order_relaxed)) continue;
            try {
                job_(job_fn_, piece, worker);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
                failed_.store(true, std::memory_order_relaxed);
            }
        }
    }

    void worker_loop(int worker) {
        std::uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
            }
            work(worker);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--busy_ == 0) done_.notify_one();
        }
    }

    void shutdown() noexcept {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        start_.notify_all();
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        threads_.clear();
    }

    int size_;
    std::vector<std::thread> threads_;
    std::mutex run_mutex_;  // one run() at a time
    std::mutex mutex_;      // guards everything below except the two atomics
    std::condition_variable start_, done_;
    bool stop_ = false;
    std::uint64_t generation_ = 0;
    int busy_ = 0;
    void (*job_)(void*, index_t, int) = nullptr;
    void* job_fn_ = nullptr;
    index_t pieces_ = 0;
    std::exception_ptr error_;
    std::atomic<index_t> next_{0};
    std::atomic<bool> failed_{false};
};

}  // namespace treegate::parallel

#endif
