"""The fact tables behind the smoke profile's data.

The facts appear twice, in different forms: as plain sentences in the pretraining corpus
(what the tiny base model "knows") and as instruction data in each scenario's raw format
(what SFT teaches it to answer). A held-out question is then answerable from
pretraining knowledge plus the SFT format, which is what lets a tiny model show a real
base-versus-tuned gap.
"""

from __future__ import annotations

# ------------------------------------------------------------------ fact tables

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Peru": "Lima",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Cuba": "Havana",
    "Ghana": "Accra",
    "Morocco": "Rabat",
    "Nepal": "Kathmandu",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
}

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "early": "late",
    "open": "closed",
    "full": "empty",
    "strong": "weak",
    "rich": "poor",
    "young": "old",
    "hard": "soft",
    "high": "low",
    "clean": "dirty",
    "loud": "quiet",
    "wet": "dry",
    "thick": "thin",
    "long": "short",
    "deep": "shallow",
    "brave": "afraid",
    "win": "lose",
    "push": "pull",
    "buy": "sell",
    "give": "take",
    "begin": "end",
    "up": "down",
    "inside": "outside",
    "true": "false",
    "always": "never",
    "first": "last",
}

ANIMALS = {
    "dog": "mammal",
    "cat": "mammal",
    "horse": "mammal",
    "whale": "mammal",
    "bat": "mammal",
    "lion": "mammal",
    "mouse": "mammal",
    "rabbit": "mammal",
    "eagle": "bird",
    "owl": "bird",
    "penguin": "bird",
    "sparrow": "bird",
    "parrot": "bird",
    "duck": "bird",
    "shark": "fish",
    "salmon": "fish",
    "tuna": "fish",
    "trout": "fish",
    "snake": "reptile",
    "lizard": "reptile",
    "turtle": "reptile",
    "crocodile": "reptile",
    "ant": "insect",
    "bee": "insect",
    "beetle": "insect",
    "butterfly": "insect",
    "mosquito": "insect",
    "frog": "amphibian",
    "toad": "amphibian",
    "newt": "amphibian",
}

CAPITAL_QUESTIONS = [
    "What is the capital of {x}?",
    "Name the capital city of {x}.",
    "Which city is the capital of {x}?",
    "Tell me the capital of {x}.",
]
OPPOSITE_QUESTIONS = [
    ('What is the opposite of "{x}"?', ""),
    ("Give the antonym of the word below.", "{x}"),
    ('Which word means the opposite of "{x}"?', ""),
    ("Write the opposite of this word.", "{x}"),
]
ANIMAL_QUESTIONS = [
    ("Classify the animal as a mammal, bird, fish, reptile, insect or amphibian.", "{x}"),
    ("What kind of animal is a {x}?", ""),
    ("Is a {x} a mammal, bird, fish, reptile, insect or amphibian?", ""),
]

# department, symptom, cause, advice  (Chinese internal-medicine style QA)
MEDICAL = [
    ("消化科", "胃痛", "胃炎或饮食不规律", "建议清淡饮食，少吃辛辣，按时吃饭，必要时做胃镜检查。"),
    ("消化科", "腹泻", "肠道感染", "建议多喝温水补充电解质，注意饮食卫生，持续不好请做大便常规。"),
    ("消化科", "便秘", "膳食纤维不足", "建议多吃蔬菜水果，多喝水，适当运动，养成定时排便的习惯。"),
    ("消化科", "反酸烧心", "胃食管反流", "建议睡前三小时不要进食，抬高床头，少喝咖啡和浓茶。"),
    ("肝病科", "转氨酶升高", "脂肪肝或病毒性肝炎", "建议复查肝功能和乙肝五项，戒酒，控制体重。"),
    (
        "肝病科",
        "乙肝小三阳",
        "乙肝病毒感染",
        "建议定期复查病毒载量和肝脏彩超，遵医嘱决定是否抗病毒治疗。",
    ),
    ("肝病科", "脂肪肝", "饮食油腻和缺乏运动", "建议低脂饮食，每周运动五次，半年后复查彩超。"),
    ("心血管科", "胸闷", "心肌缺血", "建议尽快做心电图和心脏彩超，避免剧烈运动和情绪激动。"),
    ("心血管科", "心慌", "心律失常", "建议做动态心电图检查，少喝浓茶咖啡，保证睡眠。"),
    ("心血管科", "血压高", "原发性高血压", "建议低盐饮食，每天监测血压，遵医嘱规律服用降压药。"),
    ("内分泌科", "血糖高", "糖尿病", "建议控制主食，监测空腹和餐后血糖，必要时口服降糖药。"),
    ("内分泌科", "甲状腺结节", "甲状腺良性增生", "建议做甲状腺彩超和甲功检查，每半年复查一次。"),
    ("内分泌科", "尿酸高", "高尿酸血症", "建议少吃海鲜和动物内脏，多喝水，戒啤酒。"),
    ("呼吸科", "咳嗽", "上呼吸道感染", "建议多喝水，注意休息，咳嗽超过两周请拍胸片。"),
    ("呼吸科", "气喘", "支气管哮喘", "建议做肺功能检查，远离过敏原，随身携带吸入药物。"),
    ("呼吸科", "咽喉痛", "咽炎", "建议多喝温水，少说话，忌烟酒和辛辣食物。"),
    ("肾内科", "蛋白尿", "肾小球肾炎", "建议复查尿常规和肾功能，低盐优质蛋白饮食。"),
    ("肾内科", "水肿", "肾功能异常", "建议查尿常规和肾功能，控制盐的摄入，记录每天尿量。"),
    ("血液科", "贫血", "缺铁", "建议查血常规和铁蛋白，多吃瘦肉和动物肝脏，遵医嘱补铁。"),
    ("感染科", "发热", "病毒感染", "建议多喝水，体温超过三十八度五可服退热药，持续发热请就医。"),
    ("风湿免疫科", "关节痛", "类风湿关节炎", "建议查类风湿因子和血沉，注意关节保暖。"),
    ("普通内科", "失眠", "精神压力大", "建议规律作息，睡前不看手机，必要时短期服用助眠药。"),
]
DURATIONS = ["最近", "这几天", "这一周", "这个月", "半年来", "两天前开始"]
ASK_TEMPLATES = [
    "医生您好，我{d}总是{s}，请问该怎么办？",
    "您好，我{d}出现{s}的情况，需要注意什么？",
    "大夫，我家人{d}{s}，应该怎么处理？",
    "请问{s}怎么办？我{d}一直这样。",
]
TITLE_TEMPLATES = ["{s}怎么办", "{s}是怎么回事", "{s}需要注意什么"]


def medical_answer(cause: str, symptom: str, advice: str) -> str:
    return f"您好，{symptom}可能与{cause}有关。{advice}"


# Statutes (short excerpts of PRC laws; statute text is not subject to copyright
# under Art. 5 of the PRC Copyright Law) with a topic and a typical question.
LAWS = [
    (
        "《民法典》第一千零七十九条",
        "夫妻一方要求离婚的，可以由有关组织进行调解或者直接向人民法院提起离婚诉讼。",
        "离婚",
        "我想和配偶离婚，但对方不同意，我该怎么办？",
        "可以先由有关组织调解，也可以直接向人民法院提起离婚诉讼",
    ),
    (
        "《民法典》第一千零六十七条",
        "父母不履行抚养义务的，未成年子女或者不能独立生活的成年子女，有要求父母给付抚养费的权利。",
        "抚养费",
        "孩子的父亲不给抚养费，孩子能要求他支付吗？",
        "孩子有权要求父母给付抚养费",
    ),
    (
        "《民法典》第五百七十七条",
        "当事人一方不履行合同义务或者履行合同义务不符合约定的，应当承担继续履行、采取补救措施或者赔偿损失等违约责任。",
        "违约",
        "对方签了合同却不交货，我能要求什么？",
        "对方应当承担继续履行、采取补救措施或者赔偿损失等违约责任",
    ),
    (
        "《民法典》第一千一百六十五条",
        "行为人因过错侵害他人民事权益造成损害的，应当承担侵权责任。",
        "侵权",
        "邻居装修把我家墙弄坏了，他要负责吗？",
        "邻居因过错造成损害，应当承担侵权责任",
    ),
    (
        "《民法典》第一百八十八条",
        "向人民法院请求保护民事权利的诉讼时效期间为三年。",
        "诉讼时效",
        "朋友欠我钱两年了，现在还能起诉吗？",
        "诉讼时效期间为三年，两年内仍可起诉",
    ),
    (
        "《劳动合同法》第八十二条",
        "用人单位自用工之日起超过一个月不满一年未与劳动者订立书面劳动合同的，应当向劳动者每月支付二倍的工资。",
        "劳动合同",
        "公司用了我半年都没签劳动合同，我能要求什么？",
        "单位应当每月向您支付二倍的工资",
    ),
    (
        "《劳动合同法》第四十七条",
        "经济补偿按劳动者在本单位工作的年限，每满一年支付一个月工资的标准向劳动者支付。",
        "经济补偿",
        "公司辞退我，我工作了三年，补偿怎么算？",
        "每满一年支付一个月工资，三年应支付三个月工资",
    ),
    (
        "《劳动法》第三十六条",
        "国家实行劳动者每日工作时间不超过八小时、平均每周工作时间不超过四十四小时的工时制度。",
        "工作时间",
        "公司要求每天工作十二小时，合法吗？",
        "每日工作时间不应超过八小时，公司的要求不合法",
    ),
    (
        "《消费者权益保护法》第五十五条",
        "经营者提供商品或者服务有欺诈行为的，应当按照消费者的要求增加赔偿其受到的损失，增加赔偿的金额为消费者购买商品的价款或者接受服务的费用的三倍。",
        "消费欺诈",
        "商家把假货当真货卖给我，我能要求多少赔偿？",
        "可以要求商家赔偿价款的三倍",
    ),
    (
        "《道路交通安全法》第七十六条",
        "机动车之间发生交通事故的，由有过错的一方承担赔偿责任；双方都有过错的，按照各自过错的比例分担责任。",
        "交通事故",
        "两辆车相撞，双方都有错，赔偿怎么分？",
        "双方按照各自过错的比例分担责任",
    ),
    (
        "《民法典》第一千一百二十七条",
        "遗产按照下列顺序继承：第一顺序为配偶、子女、父母；第二顺序为兄弟姐妹、祖父母、外祖父母。",
        "继承",
        "父亲去世没有遗嘱，遗产先由谁继承？",
        "配偶、子女、父母是第一顺序继承人",
    ),
    (
        "《民法典》第七百零三条",
        "租赁合同是出租人将租赁物交付承租人使用、收益，承租人支付租金的合同。",
        "租赁",
        "房东收了租金却不让我入住，合理吗？",
        "出租人应当将房屋交付承租人使用，房东的做法不合理",
    ),
]
COUNSEL_PREFIXES = ["", "您好，", "请问律师，", "律师您好，"]
EXAM_OPTIONS = "ABCD"
