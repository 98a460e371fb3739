from npuq.report.tables import cpu_model, machine_info


def test_cpu_model_reads_the_model_name_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n")
    assert cpu_model(str(info)) == "AMD EPYC 9B14"


def test_cpu_model_falls_back_without_cpuinfo(tmp_path):
    assert cpu_model(str(tmp_path / "missing"))


def test_machine_info_names_the_cpu_and_its_kernel_isa():
    info = machine_info()
    assert info["cpu_model"] and info["torch_cpu_capability"]
