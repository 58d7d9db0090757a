// bench/roofline/report.hpp — the records a run keeps for --json, the CPU model line, and the JSON writer.
// Part of bench/roofline: above measure.hpp; machine.hpp and the cases add their probes and case lines here.
#ifndef TREEGATE_ROOFLINE_REPORT_HPP
#define TREEGATE_ROOFLINE_REPORT_HPP

#include "measure.hpp"

#include <treegate/kernels/dispatch.hpp>

#include <fstream>
#include <string>
#include <vector>

#if TREEGATE_ROOFLINE_JSON
#include <nlohmann/json.hpp>
#endif

namespace roofline {

// ---- what the run reports, kept for --json -----------------------------------------------------

/// One printed record: numeric and text fields in print order.
struct record {
    std::vector<std::pair<std::string, double>> num;
    std::vector<std::pair<std::string, std::string>> text;
    record& set(const std::string& k, double v) {
        num.emplace_back(k, v);
        return *this;
    }
    record& set(const std::string& k, const std::string& v) {
        text.emplace_back(k, v);
        return *this;
    }
};

struct report {
    record run;                    // CPU, ISA, policy, threads, clock
    record limits;                 // start-up limits
    record limits_end;             // the same measured again at the end
    std::vector<record> probes;    // every GEMM and bandwidth probe (kind, name, shape, rate)
    std::vector<record> cases;     // every case= line's fields
};
inline report g_report;

/// The CPU's "model name" from /proc/cpuinfo ("unknown" elsewhere).
inline std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
        }
    return "unknown";
}

/// The widest instruction set the kernels use on this CPU.
inline const char* active_isa() { return treegate::kernels::to_string(treegate::kernels::active_isa()); }

#if TREEGATE_ROOFLINE_JSON
inline nlohmann::json to_json(const record& r) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : r.text) j[k] = v;
    for (const auto& [k, v] : r.num) j[k] = v;
    return j;
}

inline void write_json(const std::string& path) {
    nlohmann::json doc;
    doc["run"] = to_json(g_report.run);
    doc["limits"] = to_json(g_report.limits);
    doc["limits_end"] = to_json(g_report.limits_end);
    doc["probes"] = nlohmann::json::array();
    for (const record& r : g_report.probes) doc["probes"].push_back(to_json(r));
    doc["cases"] = nlohmann::json::array();
    for (const record& r : g_report.cases) doc["cases"].push_back(to_json(r));
    std::ofstream f(path);
    f << doc.dump(2) << "\n";
    if (!f) fail("--json: cannot write '" + path + "'");
    std::printf("json: %s\n", path.c_str());
}
#else
inline void write_json(const std::string&) {}
#endif


}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_REPORT_HPP
