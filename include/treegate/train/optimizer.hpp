// treegate/train/optimizer.hpp — SGD with momentum and Adam, lazy per block, with depth-scaled decay.
// Reads the param_list that a gradient container collects (train/gradients.hpp) and updates in place.
#ifndef TREEGATE_TRAIN_OPTIMIZER_HPP
#define TREEGATE_TRAIN_OPTIMIZER_HPP

#include "../error.hpp"
#include "gradients.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace treegate::train {

/// Depth-scaled weight decay, the paper's remedy against overfitting of deep, rarely visited
/// nodes. A weight block at tree level j decays with
///
///     lambda_j = lambda * scale^j
///
/// (level 0: the root, dense layers and the output bias; a leaf_only / leaf_only block sits at
/// level D). With scale > 1 deeper, rarer nodes decay more. The decay is decoupled from the
/// gradient (as AdamW): each step that updates the block first multiplies it by
/// (1 - lr * lambda_j). Biases never decay, and a block no example visited is not decayed either.
struct weight_decay {
    double lambda = 0.0;
    double scale = 1.0;

    double at_level(int level) const noexcept { return lambda * std::pow(scale, static_cast<double>(level)); }
};

namespace detail {

/// The layout the optimizer state was built for; a different parameter list is an error.
template <class Scalar>
class block_layout {
public:
    bool empty() const noexcept { return offsets_.empty(); }
    index_t block_count() const noexcept { return static_cast<index_t>(sizes_.size()); }
    index_t total() const noexcept { return total_; }
    index_t offset(std::size_t k) const noexcept { return offsets_.data()[k]; }

    /// Records the layout on first use; afterwards checks that `blocks` has the same shape.
    void bind(const param_list<Scalar>& blocks, const char* who) {
        if (offsets_.empty() && !blocks.empty()) {
            for (const auto& b : blocks) {
                offsets_.push_back(total_);
                sizes_.push_back(b.size);
                total_ += b.size;
            }
            return;
        }
        treegate::detail::check_config(blocks.size() == sizes_.size(), who, ": the parameter list has ", blocks.size(),
                                       " blocks but the optimizer state was built for ", sizes_.size());
        for (std::size_t k = 0; k < blocks.size(); ++k)
            treegate::detail::check_config(blocks[k].size == sizes_.data()[k], who, ": parameter block ", k, " has ",
                                           blocks[k].size, " entries but the optimizer state was built for ",
                                           sizes_.data()[k]);
    }

    /// For a list of visited blocks only (gradient containers' collect_visited): `count` is
    /// the full list's length and each block's `index` its position there. O(listed blocks).
    void check_visited(const param_list<Scalar>& blocks, index_t count, const char* who) const {
        treegate::detail::check_config(count == block_count(), who, ": the parameter list has ", count,
                                       " blocks but the optimizer state was built for ", block_count());
        for (const auto& b : blocks)
            treegate::detail::check_config(b.index >= 0 && b.index < count && b.size == sizes_.data()[b.index], who,
                                           ": parameter block ", b.index, " has ", b.size,
                                           " entries but the optimizer state was built for ",
                                           b.index >= 0 && b.index < count ? sizes_.data()[b.index] : index_t(0));
    }

private:
    std::vector<index_t> offsets_, sizes_;
    index_t total_ = 0;
};

/// The one walk both optimizers make: every visited block k of `blocks`, in order, with the
/// factor (1 - lr * lambda_j) its decoupled decay applies (1 for biases). `rule(k, block, keep)`
/// is the update, the only thing sgd and adam do differently.
template <class Scalar, class Rule>
void for_each_visited(const param_list<Scalar>& blocks, bool indexed, double lr, const weight_decay& decay, Rule&& rule) {
    for (std::size_t k = 0; k < blocks.size(); ++k) {
        const param_block<Scalar>& b = blocks[k];
        if (!b.visited) continue;
        const Scalar keep = b.decay ? static_cast<Scalar>(1.0 - lr * decay.at_level(b.level)) : Scalar(1);
        rule(indexed ? static_cast<std::size_t>(b.index) : k, b, keep);
    }
}

template <class G, class L, class Scalar, class = void>
struct has_collect_visited : std::false_type {};
template <class G, class L, class Scalar>
struct has_collect_visited<G, L, Scalar,
                           std::void_t<decltype(std::declval<const G&>().collect_visited(
                               std::declval<L&>(), std::declval<param_list<Scalar>&>(), std::declval<index_t&>()))>>
    : std::true_type {};

/// The entry both optimizers share: collect a gradient container's blocks of a layer into a
/// reused list, then Derived::step(list), the update proper.
template <class Derived, class Scalar>
class collecting_step {
public:
    /// Collects `grad`'s blocks of `layer` (a layer or a sequential model) and steps. Once the
    /// layout is bound, a container that can list its visited blocks alone does so, and the
    /// step costs O(visited blocks) rather than O(all blocks) (the first step binds the
    /// layout from the full list). The updates are the same: blocks are independent.
    template <class Layer, class Grad>
    void step(Layer& layer, const Grad& grad) {
        scratch_.clear();
        Derived& self = static_cast<Derived&>(*this);
        if constexpr (has_collect_visited<Grad, Layer, Scalar>::value) {
            if (!self.layout_.empty()) {
                index_t count = 0;
                grad.collect_visited(layer, scratch_, count);
                self.layout_.check_visited(scratch_, count, Derived::name);
                self.update(scratch_, true);
                return;
            }
        }
        grad.collect(layer, scratch_);
        self.step(scratch_);
    }

private:
    param_list<Scalar> scratch_;
};

}  // namespace detail

/// SGD with (heavy-ball) momentum, lazy per block: for a visited block
///     v <- momentum * v + g;   w <- w - lr * lambda_j * w - lr * v
/// (the decay term uses the old w). An unvisited block keeps w and v untouched.
template <class Scalar>
class sgd : public detail::collecting_step<sgd<Scalar>, Scalar> {
public:
    using detail::collecting_step<sgd<Scalar>, Scalar>::step;
    struct options {
        double lr = 0.01;
        double momentum = 0.9;
        weight_decay decay{};
    };

    explicit sgd(options opt) : opt_(opt) {}
    sgd() : sgd(options{}) {}

    const options& settings() const noexcept { return opt_; }
    void set_learning_rate(double lr) noexcept { opt_.lr = lr; }

    /// One update of every visited block. The first call fixes the parameter layout.
    void step(const param_list<Scalar>& blocks) {
        layout_.bind(blocks, name);
        velocity_.resize(static_cast<std::size_t>(layout_.total()), Scalar(0));
        update(blocks, false);
    }

private:
    friend class detail::collecting_step<sgd<Scalar>, Scalar>;
    static constexpr const char* name = "sgd";

    // indexed: `blocks` lists visited blocks with their positions (collect_visited).
    void update(const param_list<Scalar>& blocks, bool indexed) {
        const Scalar lr = static_cast<Scalar>(opt_.lr), mu = static_cast<Scalar>(opt_.momentum);
        detail::for_each_visited(blocks, indexed, opt_.lr, opt_.decay, [&](std::size_t k, const param_block<Scalar>& b, Scalar keep) {
            Scalar* v = velocity_.data() + layout_.offset(k);
            for (index_t i = 0; i < b.size; ++i) {
                v[i] = mu * v[i] + b.grad[i];
                b.value[i] = keep * b.value[i] - lr * v[i];
            }
        });
    }

    options opt_;
    detail::block_layout<Scalar> layout_;
    std::vector<Scalar> velocity_;
};

/// Adam with lazy, per-block moments. Each block keeps its own step count t; a step that no
/// example of the batch reached leaves the block, its moments and its t untouched, so a rarely
/// visited node is corrected as if its visits were consecutive steps. For a visited block:
///     t <- t + 1;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
///     w <- w - lr * lambda_j * w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
template <class Scalar>
class adam : public detail::collecting_step<adam<Scalar>, Scalar> {
public:
    using detail::collecting_step<adam<Scalar>, Scalar>::step;
    struct options {
        double lr = 1e-3;
        double beta1 = 0.9;
        double beta2 = 0.999;
        double eps = 1e-8;
        weight_decay decay{};
    };

    explicit adam(options opt) : opt_(opt) {}
    adam() : adam(options{}) {}

    const options& settings() const noexcept { return opt_; }
    void set_learning_rate(double lr) noexcept { opt_.lr = lr; }

    /// Blocks in the bound layout (0 before the first step).
    index_t block_count() const noexcept { return layout_.block_count(); }
    /// Updates block k has received so far.
    std::int64_t steps(index_t k) const noexcept { return steps_.data()[k]; }

    /// One update of every visited block. The first call fixes the parameter layout.
    void step(const param_list<Scalar>& blocks) {
        layout_.bind(blocks, name);
        m_.resize(static_cast<std::size_t>(layout_.total()), Scalar(0));
        v_.resize(static_cast<std::size_t>(layout_.total()), Scalar(0));
        steps_.resize(blocks.size(), 0);
        update(blocks, false);
    }

private:
    friend class detail::collecting_step<adam<Scalar>, Scalar>;
    static constexpr const char* name = "adam";

    // indexed: `blocks` lists visited blocks with their positions (collect_visited).
    void update(const param_list<Scalar>& blocks, bool indexed) {
        const Scalar b1 = static_cast<Scalar>(opt_.beta1), b2 = static_cast<Scalar>(opt_.beta2);
        const Scalar one_b1 = static_cast<Scalar>(1.0 - opt_.beta1), one_b2 = static_cast<Scalar>(1.0 - opt_.beta2);
        const Scalar eps = static_cast<Scalar>(opt_.eps);
        detail::for_each_visited(blocks, indexed, opt_.lr, opt_.decay, [&](std::size_t k, const param_block<Scalar>& b, Scalar keep) {
            const std::int64_t t = ++steps_.data()[k];
            const double td = static_cast<double>(t);
            const Scalar step_size = static_cast<Scalar>(opt_.lr / (1.0 - std::pow(opt_.beta1, td)));
            const Scalar inv_c2 = static_cast<Scalar>(1.0 / (1.0 - std::pow(opt_.beta2, td)));
            Scalar* m = m_.data() + layout_.offset(k);
            Scalar* v = v_.data() + layout_.offset(k);
            for (index_t i = 0; i < b.size; ++i) {
                const Scalar g = b.grad[i];
                m[i] = b1 * m[i] + one_b1 * g;
                v[i] = b2 * v[i] + one_b2 * g * g;
                b.value[i] = keep * b.value[i] - step_size * m[i] / (std::sqrt(v[i] * inv_c2) + eps);
            }
        });
    }

    options opt_;
    detail::block_layout<Scalar> layout_;
    std::vector<Scalar> m_, v_;
    std::vector<std::int64_t> steps_;
};

}  // namespace treegate::train

#endif
